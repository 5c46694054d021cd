#!/usr/bin/env python
"""Where a torchvision training step goes: backbone (+FPN), RPN, ROI sampling + box head, head +
regularizers (the core classifier's losses), backward + optimiser step; and the step time of
several configs measured side by side (interleaved, same process, same batches).

    .venv/bin/python benchmarks/profile_train_step.py --config configs/Digits-OOD/softmax.yaml \\
        --compare configs/Digits-OOD/softmax.yaml:"MODEL.RESNETS.DEPTH 18" --steps 20

Forward phases are timed with forward hooks (wall clock, torch threads as configured); the backward
pass is timed as a whole. Prints milliseconds per step and the share of each phase, then, for
``--compare`` entries (``config[:KEY VALUE ...]``), the step-time ratio to the first config.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(spec: str, seed: int = 0):
    import torch

    from ood_det.apps.config import load_config
    from ood_det.data import catalog
    from ood_det.tv.build import build_model
    from ood_det.tv.data import build_train_loader
    from ood_det.tv.train import build_optimizer, get_train_dicts

    path, _, opts = spec.partition(":")
    cfg = load_config(path, shlex.split(opts) + ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(seed)
    names = catalog.thing_classes(cfg.DATASETS.TRAIN, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    model = build_model(cfg, names, load_weights=False).train()
    opt = build_optimizer(cfg, model)
    loader = iter(build_train_loader(get_train_dicts(cfg), cfg.SOLVER.IMS_PER_BATCH, seed=seed, num_workers=0))
    return cfg, model, opt, loader


def profile(spec: str, steps: int, warmup: int = 3):
    """Per-phase milliseconds per step (mean over ``steps`` after ``warmup``)."""
    cfg, model, opt, loader = build(spec)
    times = defaultdict(float)
    starts = {}

    def pre(name):
        def hook(mod, inp):
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(mod, inp, out):
            times[name] += time.perf_counter() - starts[name]
        return hook

    rh = model.roi_heads
    parts = {"transform": model.transform, "backbone+fpn": model.backbone, "rpn": model.rpn,
             "roi_heads (all)": rh, "roi_align": rh.box_roi_pool, "box_head": rh.box_head,
             "classifier forward": model.classifier}
    for name, mod in parts.items():
        mod.register_forward_pre_hook(pre(name))
        mod.register_forward_hook(post(name))
    clf = model.classifier
    orig_losses = clf.losses

    def timed_losses(*a, **k):
        t = time.perf_counter()
        out = orig_losses(*a, **k)
        times["head+regularizer losses"] += time.perf_counter() - t
        return out

    clf.losses = timed_losses
    step_times = []
    for i in range(warmup + steps):
        if i == warmup:
            times.clear()
        b = next(loader)
        t0 = time.perf_counter()
        losses = model(b["images"], b["targets"])
        t1 = time.perf_counter()
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= warmup:
            times["forward (all)"] += t1 - t0
            times["backward+step"] += t2 - t1
            step_times.append(t2 - t0)
    ms = {k: 1000 * v / steps for k, v in times.items()}
    ms["step"] = 1000 * statistics.mean(step_times)
    return cfg, ms, step_times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/Digits-OOD/softmax.yaml"))
    p.add_argument("--compare", nargs="*", default=[], help="more config[:KEY VALUE ...] specs, timed interleaved")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds for --compare")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cfg, ms, _ = profile(a.config, a.steps)
    print(f"\n{a.config}: {ms['step']:.0f} ms/step (batch {cfg.SOLVER.IMS_PER_BATCH}, "
          f"{cfg.INPUT.MIN_SIZE_TRAIN} px, {cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE} ROIs/img)")
    print(f"{'phase':<26} {'ms/step':>8} {'share':>7}")
    for k in ("transform", "backbone+fpn", "rpn", "roi_heads (all)", "roi_align", "box_head",
              "classifier forward", "head+regularizer losses", "forward (all)", "backward+step"):
        print(f"{k:<26} {ms.get(k, 0):8.1f} {100 * ms.get(k, 0) / ms['step']:6.1f}%")
    rest = ms["roi_heads (all)"] - sum(ms.get(k, 0) for k in ("roi_align", "box_head", "classifier forward",
                                                               "head+regularizer losses"))
    print(f"{'roi_heads: sampling etc.':<26} {rest:8.1f} {100 * rest / ms['step']:6.1f}%")
    if a.compare:
        specs = [a.config] + list(a.compare)
        res = defaultdict(list)
        for r in range(a.rounds):
            for s in specs:
                res[s].append(profile(s, max(5, a.steps // 2), warmup=2)[1]["step"])
        base = statistics.median(res[specs[0]])
        print(f"\n{'config':<70} {'ms/step':>8} {'ratio':>6}   (median of {a.rounds} interleaved rounds)")
        for s in specs:
            m = statistics.median(res[s])
            print(f"{s:<70} {m:8.0f} {m / base:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
