#!/usr/bin/env python
"""Scoring tool throughput: end-to-end frames/s of ``ood-det-score`` on a generated video vs the
model's own forward-only throughput, in one run.

* **forward-only**: ``model.predict_images`` on the same frames, decoded beforehand, in batches of
  ``--batch-size`` (what the tool can at best reach);
* **tool**: :class:`ood_det.apps.score.ScoringRun` on the video file: decoding, batching, scoring,
  drawing, encoding the annotated video and writing ``detections.jsonl`` (the model is loaded once,
  outside the timing, as in a long run);
* **I/O only**: the same run with a stand-in model that returns the real detections at no cost:
  the tool's own ceiling (decode + draw + encode + JSON), which the model hides when it is slower.

CPU time per frame (all threads) of the forward-only and the I/O-only runs is reported too: on a
busy machine it is a steadier measure of what the tool adds than wall time.

The two are timed alternately ``--repeats`` times after a warm-up; the medians and their ratio
(target >= 0.9), the median of the per-repetition ratios, and a markdown row for
``benchmarks/README.md`` are printed.

    python benchmarks/bench_score.py                        # smoke config, random weights
    python benchmarks/bench_score.py --weights output/digits_ood/smoke/model_final.pth \\
        --frames 64 --size 480x640 --batch-size 4

The video shows DigitsOOD ``mixed`` canvases (ID and OOD digits) scaled to ``--size``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import cv2
import torch


def make_video(path: str, n: int, height: int, width: int, fps: float = 25.0) -> None:
    from ood_det.data.digits_ood import (DigitsOODConfig, load_source_digits, render_image,
                                         split_sources)

    cfg = DigitsOODConfig(seed=0)
    sources, targets = load_source_digits()
    test = split_sources(targets, cfg.seed, cfg.source_fractions)["test"]
    pools = {d: test[targets[test] == d] for d in range(10)}
    ext = os.path.splitext(path)[1].lower()
    fourcc = {".avi": "MJPG"}.get(ext, "mp4v")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not w.isOpened():
        raise OSError(f"cannot write {path}")
    canvases = [render_image(cfg, "mixed", i, sources, pools)[0] for i in range(min(n, 16))]
    for i in range(n):
        grey = cv2.resize(canvases[i % len(canvases)], (width, height),
                          interpolation=cv2.INTER_LINEAR)
        w.write(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    w.release()


def decode(path: str):
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def build_predictor(args):
    from ood_det.apps.config import load_config
    from ood_det.tv.build import build_model
    from ood_det.apps.predictor import Predictor

    if args.weights:
        return Predictor.from_checkpoint(args.config, args.weights, device=args.device)
    cfg = load_config(args.config, ["MODEL.DEVICE", args.device])
    model = build_model(cfg, load_weights=False).eval()
    return Predictor(model, source=f"{args.config} (random weights)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/Digits-OOD/smoke.yaml")
    p.add_argument("--weights", default="", help="checkpoint; default: random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", default="480x640", help="HxW of the video frames")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--conf-thresh", type=float, default=0.05,
                   help="boxes drawn by the tool (0.05: every box the model returns)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--video-ext", default=".mp4", choices=[".mp4", ".avi", ".mkv", ".mov"])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    h, w = (int(v) for v in args.size.lower().split("x"))

    from ood_det.apps.media import collect_sources
    from ood_det.apps.score import ScoringRun

    tmp = tempfile.mkdtemp(prefix="bench_score_")
    video = os.path.join(tmp, "bench" + args.video_ext)
    make_video(video, args.frames, h, w)
    frames = decode(video)
    assert len(frames) == args.frames, (len(frames), args.frames)
    pred = build_predictor(args)
    model = pred.model
    score = pred.score
    thr = pred.threshold(required=False)
    thr = 0.0 if thr is None else thr
    bs = args.batch_size
    kw = {"batch_size": bs} if pred._batch_kw else {}

    cpu_ms = {"forward": [], "io": []}

    def forward_only() -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(frames), bs):
            model.predict_images(frames[i:i + bs], score=score, **kw)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        cpu_ms["forward"].append((time.process_time() - c0) * 1e3 / len(frames))
        return len(frames) / (time.perf_counter() - t0)

    boxes = []
    replay = [d for i in range(0, len(frames), bs) for d in pred(frames[i:i + bs], score=score)]

    class Replay:
        """The model's detections of every frame, returned at no cost: the tool's I/O alone."""

        def __init__(self):
            self.i = 0

        def __call__(self, images, score=None):
            out = replay[self.i:self.i + len(images)]
            self.i += len(images)
            return out

    def tool(predictor=pred) -> float:
        out = tempfile.mkdtemp(dir=tmp)
        sources, skipped = collect_sources([video], out)
        run = ScoringRun(predictor, pred.class_names, sources, out, thr, score=score,
                         batch_size=bs,
                         conf_thresh=args.conf_thresh, skipped=skipped, progress=False)
        t0, c0 = time.perf_counter(), time.process_time()
        s = run.run()
        dt = time.perf_counter() - t0
        if isinstance(predictor, Replay):
            cpu_ms["io"].append((time.process_time() - c0) * 1e3 / len(frames))
        assert s["frames"] == len(frames) and not s["skipped"], s
        boxes.append(s["boxes"] / s["frames"])
        return len(frames) / dt

    forward_only()  # warm-up (allocator, oneDNN kernels)
    fw, tl, io = [], [], []
    for _ in range(args.repeats):
        fw.append(forward_only())
        tl.append(tool())
        io.append(tool(Replay()))
    res = {
        "device": args.device if not args.device.startswith("cuda")
        else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "config": args.config,
        "weights": args.weights or "random",
        "frames": args.frames,
        "size": f"{h}x{w}",
        "video": args.video_ext,
        "batch_size": bs,
        "boxes_per_frame": round(statistics.mean(boxes), 1),
        "forward_fps": [round(v, 2) for v in fw],
        "tool_fps": [round(v, 2) for v in tl],
        "forward_fps_median": round(statistics.median(fw), 2),
        "tool_fps_median": round(statistics.median(tl), 2),
        "io_only_fps": [round(v, 2) for v in io],
        "io_only_fps_median": round(statistics.median(io), 2),
        # CPU time (all threads of this process) per frame: stabler than wall time on a busy
        # machine; the tool's I/O costs io / (forward + io) of the CPU when no core is spare
        "forward_cpu_ms_per_frame": round(statistics.median(cpu_ms["forward"]), 1),
        "io_cpu_ms_per_frame": round(statistics.median(cpu_ms["io"]), 1),
    }
    res["ratio"] = round(res["tool_fps_median"] / res["forward_fps_median"], 3)
    # each tool run next to its forward-only run: robust to a machine whose load drifts
    res["ratio_pairwise_median"] = round(statistics.median(t / f for t, f in zip(tl, fw)), 3)
    print(json.dumps(res, indent=2))
    print(f"| {res['device']} ({res['cpu_count']} cores, {res['torch_threads']} torch threads) "
          f"| {res['size']} {res['video']} x{res['frames']} | {bs} | {res['boxes_per_frame']} "
          f"| {res['forward_fps_median']} | {res['tool_fps_median']} | {res['ratio']} "
          f"({res['ratio_pairwise_median']}) "
          f"| {res['io_only_fps_median']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
