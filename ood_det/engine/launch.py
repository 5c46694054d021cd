"""Starting several processes: :func:`launch` (used by the torchvision backend's trainer).

``num_gpus_per_machine`` local processes (one per GPU; on a CPU-only machine gloo processes),
``num_machines`` / ``machine_rank`` / ``dist_url`` span machines, and a run started by
``torchrun`` (``WORLD_SIZE`` set) joins its process group. NCCL is used on CUDA, gloo otherwise.
"""
from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.distributed as dist

from . import comm


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
