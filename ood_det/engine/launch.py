"""Command line entry point: ``python tools/train_net.py --config X.yaml [--eval-only] [--resume]
[--num-gpus N] [KEY VALUE ...]`` (also installed as ``ood-det-train``).

Trains and then evaluates (or only evaluates with ``--eval-only``) the config's detector. With
``BACKEND: detectron2`` everything is handed to :func:`ood_det.d2.train_net.main`.

Several processes: ``--num-gpus N`` spawns N local processes (one per GPU; on a CPU-only machine
N gloo processes), ``--num-machines`` / ``--machine-rank`` / ``--dist-url`` span machines, and a
run started by ``torchrun`` (``WORLD_SIZE`` set) joins its process group. NCCL is used on CUDA,
gloo otherwise.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from ..config import load_config
from . import comm

logger = logging.getLogger("ood_det")


def default_argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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


# ------------------------------------------------------------------------------ launching
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _distributed_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args):
    rank = machine_rank * num_per_machine + local_rank
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(_backend(), init_method=dist_url, world_size=world_size, rank=rank)
    try:
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(main_func: Callable, num_gpus_per_machine: int = 1, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args: tuple = ()):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes.

    One process: called directly (its return value is returned). Under ``torchrun`` (env
    ``WORLD_SIZE`` > 1): joins the group from the environment and calls it. Otherwise spawns the
    local processes with ``torch.multiprocessing`` (nothing is returned).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not comm.is_dist() and "MASTER_ADDR" in os.environ:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(_backend(), init_method="env://")
        try:
            return main_func(*args)
        finally:
            dist.destroy_process_group()
    world = num_gpus_per_machine * num_machines
    if world <= 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works on one machine only; give tcp://host:port")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} GPU(s) visible")
    torch.multiprocessing.spawn(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world, num_gpus_per_machine, machine_rank, dist_url, args),
        daemon=False,
    )
    return None


# --------------------------------------------------------------------------------- main
def run(args):
    """Train (unless ``--eval-only``) and evaluate in this process; returns the metrics dict on rank 0."""
    from .train_loop import setup_logging

    cfg = load_config(args.config_file or None, args.opts)
    setup_logging(cfg.OUTPUT_DIR, comm.get_rank())
    logger.info("command line: %s", " ".join(sys.argv))
    from .evaluate import evaluate

    if args.eval_only:
        weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"--eval-only: no weights at {weights} (set MODEL.WEIGHTS)")
        metrics = evaluate(cfg, weights=weights) if comm.is_main_process() else None
        comm.synchronize()
        return metrics
    from .train_loop import train

    final = train(cfg, resume=args.resume)
    metrics = evaluate(cfg, weights=final) if comm.is_main_process() else None
    comm.synchronize()
    return metrics


def main(argv: Optional[Sequence[str]] = None):
    args = default_argument_parser().parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    cfg = load_config(args.config_file or None, args.opts)
    if cfg.BACKEND == "detectron2":
        from ..d2.train_net import main as d2_main

        return d2_main(args)
    return launch(run, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))


if __name__ == "__main__":  # pragma: no cover
    main()
