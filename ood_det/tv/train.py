"""Training loop of the torchvision backend.

SGD with momentum, linear warm-up and multi-step decay (detectron2's ``WarmupMultiStepLR``
schedule), automatic mixed precision on CUDA (``SOLVER.AMP.ENABLED``), and
``DistributedDataParallel`` when several processes run (see :mod:`ood_det.engine.launch`).
Nothing is written to ``OUTPUT_DIR`` before the data, the model and the optimiser are built.
Rank 0 writes ``model_XXXXXXX.pth`` every ``SOLVER.CHECKPOINT_PERIOD`` iterations and
``model_final.pth`` at the end, plus ``last_checkpoint`` (``--resume`` continues from it),
``log.txt`` and ``train_metrics.jsonl``. A non-finite loss stops training with
:class:`FloatingPointError` naming the iteration and the losses; the checkpoints already written
are kept untouched.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import random
import time
from typing import Dict, List

import torch

from ..data import catalog
from ..engine import comm
from ..engine.checkpoint import last_checkpoint, load_checkpoint, make_checkpoint, restore, save_checkpoint
from ..engine import jsonio
from ..engine.logger import console_through_tqdm
from .build import build_model

logger = logging.getLogger("ood_det")

LOG_PERIOD = 20


def seed_all(seed: int) -> int:
    """Seed python, numpy and torch; a negative seed draws one. Returns the seed used."""
    import numpy as np

    if seed is None or seed < 0:
        seed = int.from_bytes(os.urandom(2), "little")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return int(seed)


# ------------------------------------------------------------------------------ optimiser
def build_optimizer(cfg, model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY
    )


def lr_factor(it: int, cfg) -> float:
    """detectron2's WarmupMultiStepLR factor at iteration ``it``."""
    s = cfg.SOLVER
    decay = s.GAMMA ** bisect.bisect_right(sorted(s.STEPS), it)
    if it < s.WARMUP_ITERS:
        if s.WARMUP_METHOD == "constant":
            warm = s.WARMUP_FACTOR
        elif s.WARMUP_METHOD == "linear":
            alpha = it / s.WARMUP_ITERS
            warm = s.WARMUP_FACTOR * (1 - alpha) + alpha
        else:
            raise ValueError(f"SOLVER.WARMUP_METHOD={s.WARMUP_METHOD!r}: expected 'linear' or 'constant'")
        return warm * decay
    return decay


def build_scheduler(cfg, optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg))


def _clip(cfg, params):
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return
    if c.CLIP_TYPE == "value":
        torch.nn.utils.clip_grad_value_(params, c.CLIP_VALUE)
    elif c.CLIP_TYPE == "norm":
        torch.nn.utils.clip_grad_norm_(params, c.CLIP_VALUE, c.NORM_TYPE)
    else:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={c.CLIP_TYPE!r}: expected 'value' or 'norm'")


def _to_device(batch, device):
    images = [im.to(device, non_blocking=True) for im in batch["images"]]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
    return images, targets


def get_train_dicts(cfg) -> List[Dict]:
    """DATASETS.TRAIN concatenated; unknown objects dropped from the targets later; images with no
    known object removed when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``."""
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: nothing to train on")
    dicts = [d for n in names for d in catalog.get_dicts(n)]
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        kept = [
            d for d in dicts
            if any(int(a["category_id"]) >= 0 and not a.get("iscrowd", 0) for a in d.get("annotations", []))
        ]
        if len(kept) < len(dicts):
            logger.info("removed %d training image(s) without known objects", len(dicts) - len(kept))
        if not kept:
            raise ValueError(f"DATASETS.TRAIN {names}: no image has a known-class object")
        dicts = kept
    return dicts


# ---------------------------------------------------------------------------------- train
def train(cfg, resume: bool = False, model=None) -> str:
    """Train the torchvision detector of ``cfg``; returns the path of ``model_final.pth``.

    Args:
        cfg: the config (torchvision backend).
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` if it exists (training state and
            iteration restored); otherwise start from ``MODEL.WEIGHTS`` / scratch.
        model: an already built model (tests); default: :func:`~ood_det.tv.build.build_model`.
    """
    rank, world = comm.get_rank(), comm.get_world_size()
    out = cfg.OUTPUT_DIR
    seed = seed_all(cfg.SEED if cfg.SEED < 0 else cfg.SEED + rank)
    logger.info("training %s / %s on %d process(es), seed %d", cfg.MODEL.OOD.HEAD, cfg.BACKEND, world, seed)
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")

    dicts = get_train_dicts(cfg)
    class_names = catalog.thing_classes(cfg.DATASETS.TRAIN, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    final_path = os.path.join(out, "model_final.pth")
    ckpt_path = last_checkpoint(out) if resume else None
    if model is None:
        model = build_model(cfg, class_names, load_weights=ckpt_path is None)
    device = next(model.parameters()).device
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    use_amp = bool(cfg.SOLVER.AMP.ENABLED) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_iter = 0
    if ckpt_path is not None:
        start_iter = restore(load_checkpoint(ckpt_path), model, optimizer, scheduler, scaler)
        logger.info("resuming from %s at iteration %d", ckpt_path, start_iter)
    elif resume:
        logger.warning("--resume: no checkpoint in %s (no %s file): training from scratch", out, "last_checkpoint")
    # everything is built and checked: only now is OUTPUT_DIR written to
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfg.dump())
    max_iter = int(cfg.SOLVER.MAX_ITER)
    if start_iter >= max_iter:
        logger.info("nothing to train: iteration %d >= SOLVER.MAX_ITER %d", start_iter, max_iter)
        if rank == 0 and not os.path.isfile(final_path):
            save_checkpoint(make_checkpoint(model, cfg, start_iter, optimizer, scheduler, scaler), final_path)
        comm.synchronize()
        return final_path

    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    from ..tv.data import build_train_loader

    loader = build_train_loader(
        dicts,
        cfg.SOLVER.IMS_PER_BATCH // world,
        # one image order shared (and sharded) by all processes; a resumed run draws a new one
        seed=max(int(cfg.SEED), 0) + start_iter,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        flip=cfg.INPUT.RANDOM_FLIP,
        rank=rank,
        world_size=world,
    )
    data_iter = iter(loader)
    skipped = set()
    metrics_file = open(os.path.join(out, "train_metrics.jsonl"), "a", encoding="utf-8") if rank == 0 else None
    period = int(cfg.SOLVER.CHECKPOINT_PERIOD)
    eval_period = int(cfg.TEST.EVAL_PERIOD)

    from tqdm import tqdm

    bar = tqdm(total=max_iter, initial=start_iter, desc="train", unit="it", disable=rank != 0, dynamic_ncols=True)
    model.train()
    t_start = time.perf_counter()
    it = start_iter
    restore_console = console_through_tqdm(logger)
    try:
        while it < max_iter:
            batch = next(data_iter)
            skipped.update(batch["skipped"])
            empty_run = 0
            while not batch["images"]:
                empty_run += 1
                if empty_run > len(dicts):
                    raise RuntimeError(f"no readable training image: {len(skipped)} skipped")
                batch = next(data_iter)
                skipped.update(batch["skipped"])
            images, targets = _to_device(batch, device)
            with torch.autocast(device_type=device.type, enabled=use_amp):
                loss_dict = model(images, targets)
            losses = sum(loss_dict.values())
            logged = comm.reduce_dict(loss_dict)
            total = sum(logged.values())
            if not math.isfinite(total):
                last = last_checkpoint(out)
                raise FloatingPointError(
                    f"loss became non-finite at iteration {it}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in sorted(logged.items()))
                    + f". Training stopped; the last good checkpoint is {last or '(none written yet)'}. "
                    "Lower SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses).backward()
            if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
                scaler.unscale_(optimizer)
                _clip(cfg, [p for g in optimizer.param_groups for p in g["params"]])
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            it += 1

            lr = optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2g}")
            if rank == 0 and (it % LOG_PERIOD == 0 or it == max_iter or it == start_iter + 1):
                rec = {"iteration": it, "lr": lr, "total_loss": total, **logged,
                       "time": round(time.perf_counter() - t_start, 2)}
                metrics_file.write(jsonio.dumps(rec) + "\n")
                metrics_file.flush()
                logger.debug("iter %d: %s", it, rec)
                if it % (LOG_PERIOD * 10) == 0 or it == max_iter:
                    logger.info("iter %d/%d  loss %.4f  (%s)  lr %.3g", it, max_iter, total,
                                ", ".join(f"{k} {v:.3f}" for k, v in sorted(logged.items())), lr)
            if it < max_iter and period > 0 and it % period == 0:
                if rank == 0:
                    save_checkpoint(
                        make_checkpoint(model, cfg, it, optimizer, scheduler, scaler),
                        os.path.join(out, f"model_{it - 1:07d}.pth"),
                    )
                comm.synchronize()
            if it < max_iter and eval_period > 0 and it % eval_period == 0:
                if rank == 0:
                    from ..evaluation.driver import run_id_evaluation
                    from .evaluation import TVProtocolBackend

                    run_id_evaluation(cfg, TVProtocolBackend(model, cfg.DATALOADER.NUM_WORKERS))
                    model.train()
                comm.synchronize()
    finally:
        restore_console()
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if skipped:
            logger.warning("%d unreadable training image(s) skipped: %s", len(skipped), ", ".join(sorted(skipped)[:5]))

    elapsed = time.perf_counter() - t_start
    logger.info("training done: %d iterations in %.1f s (%.3f s/it)", it - start_iter, elapsed,
                elapsed / max(1, it - start_iter))
    if rank == 0:
        ck = make_checkpoint(model, cfg, it, optimizer, scheduler, scaler)
        ck["train_seconds"] = float(elapsed)
        save_checkpoint(ck, final_path)
    comm.synchronize()
    return final_path
