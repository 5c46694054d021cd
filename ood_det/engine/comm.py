"""Small helpers around ``torch.distributed`` (all of them work without it being initialised)."""
from __future__ import annotations

import os
from typing import Dict

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    if is_dist() and get_world_size() > 1:
        dist.barrier()


def resolve_device(name: str) -> torch.device:
    """``MODEL.DEVICE`` -> a device; "auto" = cuda when available. Under DDP "cuda" becomes the
    process's local GPU."""
    name = str(name or "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"MODEL.DEVICE={name!r} but CUDA is not available; use MODEL.DEVICE cpu")
        if name == "cuda" and is_dist():
            name = f"cuda:{get_local_rank()}"
    return torch.device(name)


@torch.no_grad()
def reduce_dict(values: Dict[str, torch.Tensor], average: bool = True) -> Dict[str, float]:
    """Scalar tensors averaged (or summed) over all processes, as python floats."""
    names = sorted(values)
    if not names:
        return {}
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    if get_world_size() > 1:
        dist.all_reduce(stacked)
        if average:
            stacked /= get_world_size()
    return {k: float(v) for k, v in zip(names, stacked.cpu())}


def broadcast_object(obj, src: int = 0):
    """``obj`` of process ``src`` on every process (picklable python objects)."""
    if get_world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every process's ``obj`` on every process, in rank order."""
    if get_world_size() <= 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
