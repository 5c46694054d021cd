"""``python tools/train_net.py --config X.yaml [--eval-only] [--resume] [--num-gpus N] [KEY VALUE ...]``
(also installed as ``ood-det-train``): train and evaluate an OOD-aware detector.

The one entry point above both backends. It owns the command line, loads the config once
(:func:`ood_det.apps.config.load_config`), checks everything that can be checked before any file
is written — the config's values, the device, with ``--eval-only`` that the checkpoint belongs to
the config (same backend, head and classes), with ``--resume`` the stored schedule — and then
hands the config to the backend of its ``BACKEND`` key (:mod:`ood_det.tv.train_net` or
:mod:`ood_det.d2.train_net`).

Several processes: ``--num-gpus N`` spawns N local processes (one per GPU; on a CPU-only machine
N gloo processes for the torchvision backend), ``--num-machines`` / ``--machine-rank`` /
``--dist-url`` span machines, and a run started by ``torchrun`` joins its process group.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from ..config.validate import validate_config
from ..engine.checkpoint import check_metadata, last_checkpoint, load_checkpoint, read_metadata
from ..engine.comm import resolve_device
from .backends import get_backend
from .config import load_config

__all__ = ["default_argument_parser", "prepare", "main", "cli"]

logger = logging.getLogger("ood_det")


def default_argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/train_net.py",
        description="Train and evaluate an OOD-aware detector (torchvision or detectron2 backend).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python tools/train_net.py --config configs/Digits-OOD/isomaxplus.yaml "
        "SOLVER.MAX_ITER 500 OUTPUT_DIR output/try",
    )
    p.add_argument("--config", "--config-file", dest="config_file", default="", metavar="FILE",
                   help="path to the YAML config")
    p.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS (or OUTPUT_DIR/model_final.pth)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs; CPU processes without CUDA)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 .. num-machines - 1)")
    p.add_argument("--dist-url", default="auto", help="init URL of the process group, e.g. tcp://host:port; "
                   "'auto' picks a free local port (one machine only)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                   help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_ITER 100")
    return p


def _opt_keys(opts: Sequence[str]) -> set:
    return set(list(opts)[0::2])


def _apply_stored_schedule(cfg, opts: Sequence[str]) -> None:
    """``--resume``: continue the schedule the checkpoint was started with (``SOLVER.MAX_ITER``,
    ``SOLVER.STEPS``) unless the command line sets it; say which one is used."""
    path = last_checkpoint(cfg.OUTPUT_DIR)
    if path is None:
        return
    import yaml

    ckpt = load_checkpoint(path, require_model=False)
    try:
        stored = (yaml.safe_load(ckpt.get("cfg") or "") or {}).get("SOLVER", {})
    except yaml.YAMLError:
        stored = {}
    it = int(ckpt.get("iteration", 0))
    given = _opt_keys(opts)
    for key in ("MAX_ITER", "STEPS"):
        if key not in stored:
            continue
        value = type(cfg.SOLVER[key])(stored[key]) if key == "STEPS" else int(stored[key])
        if f"SOLVER.{key}" in given:
            if value != cfg.SOLVER[key]:
                logger.info("--resume: SOLVER.%s %s from the command line (the checkpoint's run used %s)",
                            key, cfg.SOLVER[key], value)
        elif value != cfg.SOLVER[key]:
            logger.info("--resume: continuing the stored schedule SOLVER.%s %s of %s (the config says %s; "
                        "set it on the command line to change it)", key, value, path, cfg.SOLVER[key])
            cfg.SOLVER[key] = value
    if it >= int(cfg.SOLVER.MAX_ITER):
        logger.warning("--resume: %s is at iteration %d >= SOLVER.MAX_ITER %d: nothing left to train, only "
                       "the evaluation runs", path, it, int(cfg.SOLVER.MAX_ITER))


def prepare(args) -> object:
    """The checked config of ``args``: loaded once, values validated, device available,
    ``--eval-only`` weights matching the config, ``--resume`` schedule applied. Writes nothing."""
    cfg = load_config(args.config_file or None, args.opts)
    validate_config(cfg)
    resolve_device(cfg.MODEL.DEVICE)  # "cuda" without CUDA is an error now, before any file is written
    if args.eval_only:
        weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        remote = weights.startswith(("detectron2://", "http://", "https://"))
        if not remote:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"--eval-only: no weights at {weights} (set MODEL.WEIGHTS)")
            check_metadata(read_metadata(weights), cfg, args.config_file or "(defaults)", weights)
    elif args.resume:
        cfg.defrost()
        _apply_stored_schedule(cfg, args.opts)
    return cfg


def main(argv: Optional[Sequence[str]] = None):
    """Parse ``argv``, prepare the config and run its backend; returns the metrics (one process)."""
    args = default_argument_parser().parse_args(argv)
    args.opts = list(args.opts or [])
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    console = None
    if not logger.handlers:  # what prepare() says reaches the console before the run's logging starts
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%m/%d %H:%M:%S"))
        logger.addHandler(console)
        logger.setLevel(logging.INFO)
    try:
        cfg = prepare(args)
    finally:
        if console is not None:
            logger.removeHandler(console)
    return get_backend(cfg.BACKEND).main(cfg, args)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """:func:`main` for the command line: an error prints one line naming its cause (and goes to
    ``log.txt`` when logging was set up) instead of a traceback; exit code 1. ``OOD_DET_DEBUG=1``
    shows the traceback."""
    try:
        main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the command line reports every failure the same way
        if os.environ.get("OOD_DET_DEBUG"):
            raise
        # the traceback goes to log.txt (its handler takes DEBUG), the console gets one line
        logger.debug("fatal: %s: %s", type(e).__name__, e, exc_info=True)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}" if isinstance(e, (KeyError, ValueError, FileNotFoundError, ImportError))
              else f"error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
