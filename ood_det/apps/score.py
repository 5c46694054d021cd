"""``ood-det-score``: score images and videos, drawing and listing unknown (OOD) objects.

Usage::

    ood-det-score --config X.yaml --weights model.pth --input img.jpg clips/ 'shots/*.png' v.mp4 \\
        --output OUT/ [--threshold T] [--score NAME] [--batch-size N] [--conf-thresh C] \\
        [--device D] [--opts KEY VALUE ...]

(``python tools/score.py ...`` is the same.) Writes, under ``OUT/``:

* every image and video annotated, under its own file name (videos keep their frame rate, size
  and frame count);
* ``detections.jsonl``: one JSON object per image / video frame (schema in ``docs/score.md``);
* ``summary.json``: the run's settings and counts, and every skipped or damaged input with why.

A box is *unknown* when its OOD score is below the threshold (``--threshold`` or the one the
checkpoint stores for the score, found on ID validation boxes at 95 % recall by evaluation).

Exit status: 0 all inputs scored; 1 some inputs were skipped or only partly scored (damaged
video, unwritable output), the rest is done; 2 nothing was done (bad arguments, output folder not
writable, checkpoint / config problem, no threshold); 130 interrupted (Ctrl-C), with every output
written so far closed properly.

Speed: one thread decodes frames, the calling thread runs the model on batches of
``--batch-size`` frames, one thread annotates and encodes; bounded queues link them, so decoding
and encoding overlap the model.
"""
from __future__ import annotations

import argparse
import math
import os
import queue
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..engine import jsonio
from ..engine.output_lock import OutputDirLock, OutputDirLockedError
from .draw import draw_detections
from .media import (
    Frame,
    Skipped,
    Source,
    SourceEnd,
    SourceStart,
    collect_sources,
    open_video_writer,
    probe_frame_count,
    read_source,
)

JSONL_NAME = "detections.jsonl"
SUMMARY_NAME = "summary.json"
DEFAULT_CONF_THRESH = 0.5

EXIT_OK, EXIT_PARTIAL, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130

_DONE = object()


class SetupError(Exception):
    """A problem found before any input is scored (exit status 2)."""


class _Fatal:
    """Carries an exception from a worker thread to the calling thread."""

    def __init__(self, exc: BaseException):
        self.exc = exc


# ------------------------------------------------------------------------------------ helpers
def prepare_output_dir(path: str) -> str:
    """Create ``path`` if needed and check that files can be written in it.

    Raises:
        SetupError: naming the folder and the reason, before anything else is done.
    """
    if not path:
        raise SetupError("--output: an output folder is required")
    if os.path.exists(path) and not os.path.isdir(path):
        raise SetupError(f"--output {path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as f:
            f.write(b"probe")
    except OSError as e:
        raise SetupError(f"--output {path!r} cannot be written: {e.strerror or e}") from None
    return path


def _np(x) -> np.ndarray:
    """A CPU numpy view of a tensor / array / list."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def box_records(det: dict, class_names: Sequence[str], threshold: float,
                conf_thresh: float) -> Dict[str, np.ndarray]:
    """Filter one image's detections by confidence and flag unknown boxes.

    Args:
        det: ``boxes [N, 4]``, ``labels [N]``, ``scores [N]`` (box confidence), ``ood_scores [N]``
            (higher = more ID), as tensors or arrays.

    Returns:
        numpy ``boxes``, ``labels``, ``scores``, ``ood_scores`` (float64) of the boxes with
        ``scores >= conf_thresh``, and ``is_ood = ood_scores < threshold``.
    """
    boxes = _np(det["boxes"]).reshape(-1, 4).astype(np.float64)
    labels = _np(det["labels"]).reshape(-1).astype(np.int64)
    conf = _np(det["scores"]).reshape(-1).astype(np.float64)
    ood = _np(det["ood_scores"]).reshape(-1).astype(np.float64)
    if not (len(boxes) == len(labels) == len(conf) == len(ood)):
        raise ValueError(f"detections of different lengths: boxes {len(boxes)}, labels "
                         f"{len(labels)}, scores {len(conf)}, ood_scores {len(ood)}")
    keep = conf >= conf_thresh
    out = {"boxes": boxes[keep], "labels": labels[keep], "scores": conf[keep],
           "ood_scores": ood[keep]}
    out["is_ood"] = out["ood_scores"] < float(threshold)
    return out


def frame_record(src: Source, frame: Frame, height: int, width: int, recs: Dict[str, np.ndarray],
                 class_names: Sequence[str]) -> dict:
    """The ``detections.jsonl`` object of one image / frame (schema: ``docs/score.md``)."""
    dets = []
    for b, lab, c, o, u in zip(recs["boxes"].tolist(), recs["labels"].tolist(),
                               recs["scores"].tolist(), recs["ood_scores"].tolist(),
                               recs["is_ood"].tolist()):
        dets.append({
            "box": b,
            "label": lab,
            "class": class_names[lab] if 0 <= lab < len(class_names) else str(lab),
            "confidence": c,
            "ood_score": o,
            "is_ood": bool(u),
        })
    return {
        "file": src.name,
        "output": src.output,
        "frame": frame.index,
        "timestamp": frame.timestamp,
        "width": width,
        "height": height,
        "detections": dets,
    }


# ----------------------------------------------------------------------------------- pipeline
class _SourceState:
    def __init__(self):
        self.fps: Optional[float] = None
        self.writer = None
        self.frames = 0
        self.boxes = 0
        self.unknown = 0
        self.problem: Optional[str] = None  # output-side problem (cannot write)
        self.done = False


class ScoringRun:
    """Decode -> batch & score -> annotate & write, over a list of sources.

    Args:
        predictor: callable ``predictor(images, score=...)`` on a list of ``H x W x 3`` uint8 RGB
            arrays returning one dict per image (``boxes``, ``labels``, ``scores``,
            ``ood_scores``), e.g. :class:`ood_det.apps.predictor.Predictor`.
        class_names: the K known class names.
        sources, skipped: from :func:`ood_det.apps.media.collect_sources`.
        output_dir: an existing writable folder.
        threshold: boxes with ``ood_score < threshold`` are unknown.
        score: OOD score name passed to the predictor (None: its default).
        batch_size: frames per model call.
        conf_thresh: boxes with a lower box confidence are dropped.
        progress: show a tqdm bar.
        queue_frames: capacity (frames) of each queue; default ``2 * batch_size + 2``.
    """

    def __init__(self, predictor: Callable, class_names: Sequence[str], sources: List[Source],
                 output_dir: str, threshold: float, score: Optional[str] = None,
                 batch_size: int = 4, conf_thresh: float = DEFAULT_CONF_THRESH,
                 skipped: Sequence[Skipped] = (), progress: bool = True,
                 queue_frames: Optional[int] = None, conf_source: str = "given"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.predictor = predictor
        self.class_names = list(class_names)
        self.sources = list(sources)
        self.output_dir = output_dir
        self.threshold = float(threshold)
        self.score = score
        self.batch_size = int(batch_size)
        self.conf_thresh = float(conf_thresh)
        self.conf_source = conf_source
        self.skipped: List[Skipped] = list(skipped)
        self.progress = progress
        cap = queue_frames or 2 * self.batch_size + 2
        self.read_q: "queue.Queue" = queue.Queue(maxsize=cap)
        self.write_q: "queue.Queue" = queue.Queue(maxsize=cap)
        self.stop = threading.Event()  # readers stop at once (Ctrl-C, fatal error)
        self.writer_error: Optional[BaseException] = None
        self.state: Dict[int, _SourceState] = {}
        self.frames = 0
        self.boxes = 0
        self.unknown = 0
        self.interrupted = False
        self.seconds = 0.0
        self._pbar = None

    # ------------------------------------------------------------------ threads
    def _put(self, q: "queue.Queue", item, abort: Callable[[], bool]) -> bool:
        while True:
            if abort():
                return False
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue

    def _reader(self) -> None:
        abort = self.stop.is_set
        try:
            for i, src in enumerate(self.sources):
                for ev in read_source(i, src, stop=self.stop):
                    if not self._put(self.read_q, ev, abort):
                        return
        except BaseException as e:  # a bug, not bad media: hand it to the calling thread
            self._put(self.read_q, _Fatal(e), abort)
            return
        self._put(self.read_q, _DONE, abort)

    def _writer(self) -> None:
        jsonl = os.path.join(self.output_dir, JSONL_NAME)
        last_flush = time.monotonic()
        try:
            with open(jsonl, "w", encoding="utf-8") as f:
                while True:
                    item = self.write_q.get()
                    if item is _DONE:
                        break
                    if isinstance(item, SourceStart):
                        st = self.state.setdefault(item.source, _SourceState())
                        st.fps = item.fps
                    elif isinstance(item, Frame):
                        f.write(self._write_frame(item))
                        if self._pbar is not None:
                            self._pbar.update(1)
                        now = time.monotonic()
                        if now - last_flush > 1.0:
                            f.flush()
                            last_flush = now
                    elif isinstance(item, SourceEnd):
                        self._end_source(item)
                        f.flush()
                f.flush()
        except BaseException as e:
            self.writer_error = e
            self.stop.set()
        finally:
            for i, st in self.state.items():  # close what a stop left open
                self._close(st)

    def _write_frame(self, fr: Frame) -> str:
        src = self.sources[fr.source]
        st = self.state.setdefault(fr.source, _SourceState())
        h, w = fr.image.shape[:2]
        recs = box_records(fr.detections, self.class_names, self.threshold, self.conf_thresh)
        n_box, n_unk = len(recs["boxes"]), int(recs["is_ood"].sum())
        st.frames += 1
        st.boxes += n_box
        st.unknown += n_unk
        self.frames += 1
        self.boxes += n_box
        self.unknown += n_unk
        line = jsonio.dumps(frame_record(src, fr, h, w, recs, self.class_names)) + "\n"
        if st.problem is None:
            bgr = fr.bgr if fr.bgr is not None else cv2.cvtColor(fr.image, cv2.COLOR_RGB2BGR)
            draw_detections(bgr, recs["boxes"], recs["labels"], recs["scores"],
                            recs["ood_scores"], recs["is_ood"], self.class_names)
            out = os.path.join(self.output_dir, src.output)
            try:
                if src.kind == "image":
                    if not cv2.imwrite(out, bgr):
                        raise OSError(f"OpenCV could not write {out!r}")
                else:
                    if st.writer is None:
                        st.writer = open_video_writer(out, st.fps, w, h)
                    st.writer.write(bgr)
            except (OSError, cv2.error) as e:
                st.problem = f"annotated output not written: {e}"
        fr.image = fr.bgr = None  # free the frame early
        return line

    def _close(self, st: _SourceState) -> None:
        if st.writer is not None:
            st.writer.release()
            st.writer = None

    def _end_source(self, ev: SourceEnd) -> None:
        st = self.state.setdefault(ev.source, _SourceState())
        self._close(st)
        st.done = True
        src = self.sources[ev.source]
        problems = [p for p in (ev.problem, st.problem) if p]
        if problems:
            self.skipped.append(Skipped(src.name, "; ".join(problems), st.frames))

    # -------------------------------------------------------------------- main
    def _score_batch(self, pending: list) -> None:
        frames = [p for p in pending if isinstance(p, Frame)]
        if frames:
            kwargs = {} if self.score is None else {"score": self.score}
            dets = self.predictor([fr.image for fr in frames], **kwargs)
            if len(dets) != len(frames):
                raise RuntimeError(f"the model returned {len(dets)} results for "
                                   f"{len(frames)} images")
            for fr, d in zip(frames, dets):
                fr.detections = d
        for p in pending:
            if not self._put(self.write_q, p, lambda: self.writer_error is not None):
                raise RuntimeError(f"the output writer failed: {self.writer_error!r}") \
                    from self.writer_error
        pending.clear()

    def run(self) -> dict:
        """Score every source; returns the summary (also written to ``summary.json``).

        KeyboardInterrupt is caught: frames already scored are written, every output is closed
        and the summary says ``"interrupted": true``. Any other error closes the outputs the
        same way and is raised again.
        """
        t0 = time.monotonic()
        total = 0
        for s in self.sources:
            if s.kind == "video":
                s.expected_frames = probe_frame_count(s.name)
            total = None if (total is None or s.kind == "camera") else total + s.expected_frames
        self._pbar = tqdm(total=total, unit="frame", desc="scoring", disable=not self.progress,
                          dynamic_ncols=True, smoothing=0.1)
        reader = threading.Thread(target=self._reader, name="ood-det-decode", daemon=True)
        writer = threading.Thread(target=self._writer, name="ood-det-encode", daemon=True)
        writer.start()
        reader.start()
        error: Optional[BaseException] = None
        pending: list = []
        try:
            n_frames = 0
            while True:
                if self.writer_error is not None:
                    raise RuntimeError(f"the output writer failed: {self.writer_error!r}") \
                        from self.writer_error
                try:
                    item = self.read_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    self._score_batch(pending)
                    break
                if isinstance(item, _Fatal):
                    raise item.exc
                pending.append(item)
                if isinstance(item, Frame):
                    n_frames += 1
                    if n_frames >= self.batch_size:
                        self._score_batch(pending)
                        n_frames = 0
        except KeyboardInterrupt:
            self.interrupted = True
        except BaseException as e:
            error = e
        finally:
            self.stop.set()
            # the writer finishes what was already scored, then closes every output
            while writer.is_alive():
                try:
                    self.write_q.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    continue
            writer.join()
            reader.join(timeout=5.0)
            self._pbar.close()
            self.seconds = time.monotonic() - t0
        for i, src in enumerate(self.sources):  # sources cut short by a stop
            st = self.state.get(i)
            if st is not None and not st.done and (self.interrupted or error is not None):
                self.skipped.append(Skipped(src.name, "interrupted" if self.interrupted
                                            else f"stopped by an error: {error!r}", st.frames))
        summary = self.summary()
        try:
            jsonio.write_json(summary, os.path.join(self.output_dir, SUMMARY_NAME), indent=2)
        except OSError as e:
            if error is None:
                error = e
        if error is not None:
            raise error
        if self.writer_error is not None:
            raise RuntimeError(f"the output writer failed: {self.writer_error!r}") \
                from self.writer_error
        return summary

    def summary(self) -> dict:
        return {
            "frames": self.frames,
            "images": sum(1 for i, s in enumerate(self.sources) if s.kind == "image"
                          and i in self.state and self.state[i].frames),
            "videos": sum(1 for i, s in enumerate(self.sources) if s.kind != "image"
                          and i in self.state and self.state[i].frames),
            "boxes": self.boxes,
            "unknown_boxes": self.unknown,
            "score": self.score,
            "threshold": self.threshold,
            "conf_thresh": self.conf_thresh,
            "conf_thresh_source": self.conf_source,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames / self.seconds, 3) if self.seconds > 0 else None,
            "interrupted": self.interrupted,
            "skipped": [{"input": s.input, "reason": s.reason, "frames_scored": s.frames_scored}
                        for s in self.skipped],
        }


def format_summary(summary: dict, output_dir: str) -> str:
    s = summary
    lines = [
        f"scored {s['frames']} frames ({s['images']} image(s), {s['videos']} video(s)) in "
        f"{s['seconds']:.1f} s ({s['frames_per_second'] or 0:.1f} frames/s): {s['boxes']} boxes, "
        f"{s['unknown_boxes']} unknown (OOD score {s['score']!s} < {s['threshold']:.6g})",
        f"boxes kept at confidence >= {s['conf_thresh']:.4g} ({s.get('conf_thresh_source', 'given')})",
    ]
    if s["interrupted"]:
        lines.append("interrupted: the outputs written so far are complete and closed")
    if s["skipped"]:
        lines.append(f"{len(s['skipped'])} input(s) skipped or only partly scored:")
        for k in s["skipped"]:
            lines.append(f"  {k['input']}: {k['reason']}"
                         + (f" ({k['frames_scored']} frames scored)" if k["frames_scored"] else ""))
    lines.append(f"outputs: {output_dir} ({JSONL_NAME}, {SUMMARY_NAME}, annotated media)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ood-det-score",
        description="Detect objects in images and videos and mark the unknown (OOD) ones.",
        epilog="Exit status: 0 all done; 1 some inputs skipped or partly scored; 2 nothing done "
               "(setup error); 130 interrupted. Docs: docs/score.md",
    )
    p.add_argument("--config", required=True, help="model config (YAML)")
    p.add_argument("--weights", required=True, help="checkpoint (.pth) written by training")
    p.add_argument("--input", required=True, nargs="+", action="extend",
                   help="image / video files, folders, glob patterns (quote them) or cam:N; "
                        "may be repeated")
    p.add_argument("--output", required=True, help="output folder (created if needed)")
    p.add_argument("--threshold", type=float, default=None,
                   help="unknown if OOD score < this (default: the checkpoint's stored threshold "
                        "for the score)")
    p.add_argument("--score", default=None, help="OOD score name (default: the model's)")
    p.add_argument("--batch-size", type=int, default=4, help="frames per model call (default 4)")
    p.add_argument("--conf-thresh", type=float, default=None,
                   help="drop boxes with a lower box confidence (default: the F1-optimal threshold the "
                        f"evaluation stored in the checkpoint, else {DEFAULT_CONF_THRESH})")
    p.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:1, auto (default: the config's "
                        "MODEL.DEVICE)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides KEY VALUE ... (must come last)")
    return p


def _load_predictor(args):
    from .predictor import Predictor  # torch & the model stack load only here

    return Predictor.from_checkpoint(args.config, args.weights, device=args.device,
                                     opts=args.opts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``ood-det-score``; returns the exit status (see module docs)."""
    args = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"ood-det-score: error: {msg}", file=sys.stderr)
        return EXIT_SETUP

    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.conf_thresh is not None and not 0.0 <= args.conf_thresh <= 1.0:
        return fail(f"--conf-thresh must be in [0, 1], got {args.conf_thresh}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        return fail(f"--threshold must be a finite number, got {args.threshold}")
    try:
        prepare_output_dir(args.output)
        lock = OutputDirLock(args.output, "scoring").acquire()
    except (SetupError, OutputDirLockedError) as e:
        return fail(str(e))
    try:
        return _score(args, lock)
    finally:
        lock.release()


def _score(args, lock) -> int:
    def fail(msg: str) -> int:
        print(f"ood-det-score: error: {msg}", file=sys.stderr)
        return EXIT_SETUP

    sources, skipped = collect_sources(args.input, args.output)
    for s in skipped:
        print(f"ood-det-score: skipping {s.input}: {s.reason}", file=sys.stderr)
    if not sources:
        return fail("no input to score (every --input was skipped, see above)")
    try:
        predictor = _load_predictor(args)
        score = args.score or predictor.score
        if score not in predictor.score_names:
            raise SetupError(f"--score {score!r} is not supported by this model's head; "
                             f"supported: {', '.join(predictor.score_names)}")
        threshold = args.threshold if args.threshold is not None else predictor.threshold(score)
    except (SetupError, OSError, ImportError, ValueError, KeyError, LookupError,
            RuntimeError) as e:
        return fail(str(e) if str(e) else repr(e))
    except KeyboardInterrupt:
        print("ood-det-score: interrupted before scoring began; nothing written",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    stored_conf = getattr(predictor, "conf_thresh", None)
    if args.conf_thresh is not None:
        conf, conf_source = args.conf_thresh, "--conf-thresh"
    elif stored_conf is not None:
        conf, conf_source = float(stored_conf), "checkpoint (F1-optimal on ID validation)"
    else:
        conf, conf_source = DEFAULT_CONF_THRESH, "default (the checkpoint stores none)"
        print(f"ood-det-score: warning: the checkpoint stores no box-confidence threshold (run the "
              f"evaluation to store one); using {DEFAULT_CONF_THRESH}", file=sys.stderr)
    run = ScoringRun(predictor, predictor.class_names, sources, args.output, threshold,
                     score=score, batch_size=args.batch_size, conf_thresh=conf,
                     skipped=skipped, progress=not args.no_progress, conf_source=conf_source)
    summary = run.run()
    print(format_summary(summary, args.output), file=sys.stderr)
    if summary["interrupted"]:
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if summary["skipped"] else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
