"""Training and evaluation of detectron2 OOD detectors (``BACKEND: detectron2``).

``python tools/train_net.py --config configs/VOC-OOD/faster_rcnn_R_50_FPN_vos.yaml [--eval-only]
[--resume] [--num-gpus N] [--num-machines M --machine-rank R --dist-url tcp://host:port]
[KEY VALUE ...]`` reaches :func:`main` through :func:`ood_det.engine.launch.main`; it can also be
run as ``python -m ood_det.d2.train_net`` with the same arguments (``--config-file`` is accepted
too).

:class:`Trainer` is detectron2's ``DefaultTrainer`` with the OOD evaluation
(:func:`ood_det.d2.evaluator.evaluate_ood`) as its ``test``, checkpoints that carry the ``ood_det``
metadata (``{"backend", "head", "num_classes", "class_names", "score"}``) and the config, and the
training log in ``OUTPUT_DIR/train_metrics.jsonl`` (``OUTPUT_DIR/metrics.json`` holds the
evaluation, as on the torchvision side). After the final evaluation ``model_final.pth`` is
re-saved so that it holds the unknown thresholds (and DisMax / CFL post-fit state).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup, hooks, launch
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from .config import resolve_device
from .datasets import register_ood_datasets
from .evaluator import OODEvaluator, evaluate_id, evaluate_ood, flat_metrics
from .inference import find_ood_predictor

__all__ = ["Trainer", "setup", "main", "run", "argument_parser", "ood_checkpoint_metadata"]

logger = logging.getLogger("ood_det.d2")


def _unwrap(model):
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def ood_checkpoint_metadata(cfg, model) -> Dict[str, Any]:
    """The ``"ood_det"`` entry of a checkpoint (shared with the torchvision backend)."""
    clf = find_ood_predictor(_unwrap(model)).box_classifier
    names: List[str] = []
    for ds in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        names = list(MetadataCatalog.get(ds).get("thing_classes", []) or [])
        if names:
            break
    if len(names) != clf.num_classes:
        names = [f"class_{i}" for i in range(clf.num_classes)]
    return {
        "backend": "detectron2",
        "head": str(clf.head.name),
        "num_classes": int(clf.num_classes),
        "class_names": [str(n) for n in names],
        "score": str(clf.score),
    }


class _Constant:
    """A checkpointable whose state is a fixed plain value (saved, never loaded back)."""

    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return self.value

    def load_state_dict(self, state):  # the config / metadata of the current run win
        pass


def add_ood_checkpointables(checkpointer: DetectionCheckpointer, cfg, model) -> DetectionCheckpointer:
    """Make every checkpoint of ``checkpointer`` carry ``"ood_det"`` metadata and ``"cfg"``."""
    checkpointer.checkpointables["ood_det"] = _Constant(ood_checkpoint_metadata(cfg, model))
    checkpointer.checkpointables["cfg"] = _Constant(cfg.dump())
    return checkpointer


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` evaluating with the OOD protocol (see the module docstring)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        add_ood_checkpointables(self.checkpointer, cfg, self.model)

    def _evaluate_now(self):
        if self.iter + 1 >= self.max_iter:
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results
        from ..evaluation import flatten_results

        return flatten_results(evaluate_id(self.cfg, self.model))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return OODEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """The OOD evaluation of ``model`` (``evaluators`` are not used: the datasets and their
        roles come from ``DATASETS.TEST`` / ``DATASETS.OOD_TEST`` / ``TEST.OOD.VAL_DATASET``).
        Returns the flat float metrics (``<ood set>/<path>``), as ``EvalHook`` expects."""
        if evaluators is not None:
            logger.warning("Trainer.test: the given evaluators are ignored (OOD protocol)")
        final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        weights = final if os.path.isfile(final) else None
        metrics = evaluate_ood(cfg, model, output_dir=cfg.OUTPUT_DIR, weights=weights)
        return flat_metrics(metrics)

    def build_writers(self):
        out = self.cfg.OUTPUT_DIR
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(out, "train_metrics.jsonl")),
            TensorboardXWriter(out),
        ]

    def build_hooks(self):
        ret = super().build_hooks()
        # periodic evaluations (TEST.EVAL_PERIOD) measure ID mAP only; the full OOD evaluation,
        # which fits post-training state (DisMax's temperature enters the loss), runs at the end
        for i, h in enumerate(ret):
            if isinstance(h, hooks.EvalHook):
                ret[i] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate_now)

        def resave_final(trainer):
            # EvalHook.after_train ran the final evaluation, which stored thresholds and post-fit
            # state in the model: write model_final.pth again with them
            if getattr(trainer, "_last_eval_results", None) is not None and trainer.iter + 1 >= trainer.max_iter:
                done = trainer.iter
                # the iteration detectron2's PeriodicCheckpointer gave model_final (resume-safe)
                trainer.iter = trainer.max_iter - 1
                try:
                    trainer.checkpointer.save("model_final", iteration=trainer.iter)
                finally:
                    trainer.iter = done

        ret.append(hooks.CallbackHook(after_train=resave_final))
        return ret


# ------------------------------------------------------------------------------ CLI
def argument_parser() -> argparse.ArgumentParser:
    """detectron2's arguments, with ``--config`` as an alias of ``--config-file``."""
    from ..engine.launch import default_argument_parser

    return default_argument_parser()


def _normalize_args(args) -> argparse.Namespace:
    if args is None or isinstance(args, (list, tuple)):
        args = argument_parser().parse_args(list(args) if args is not None else None)
    cfg_file = getattr(args, "config_file", None) or getattr(args, "config", None) or ""
    args.config_file = cfg_file
    opts = list(getattr(args, "opts", None) or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    args.opts = opts
    for k, v in (("eval_only", False), ("resume", False), ("num_gpus", 1), ("num_machines", 1),
                 ("machine_rank", 0), ("dist_url", "auto")):
        if not hasattr(args, k):
            setattr(args, k, v)
    return args


def setup(args):
    """Config of ``args`` (``BACKEND`` must be ``detectron2``), device resolved, datasets
    registered, detectron2's ``default_setup`` (logging, ``config.yaml``, seeding) done; frozen."""
    from ..config import load_config

    cfg = load_config(args.config_file or None, args.opts)
    if cfg.BACKEND != "detectron2":
        raise ValueError(
            f"config {args.config_file or '(defaults)'} has BACKEND={cfg.BACKEND!r}; "
            "ood_det.d2.train_net runs BACKEND: detectron2 configs only"
        )
    resolve_device(cfg)
    register_ood_datasets()
    default_setup(cfg, args)
    # ood_det's own messages (evaluation tables, post-fit results) go to the same log.txt
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ood_det", abbrev_name="ood")
    cfg.freeze()
    return cfg


def _load_for_eval(cfg, model, args) -> str:
    weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    remote = weights.startswith(("detectron2://", "http://", "https://", "manifold://"))
    if not args.resume and not remote and not os.path.isfile(weights):
        raise FileNotFoundError(f"--eval-only: no weights at {weights!r} (set MODEL.WEIGHTS)")
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(weights, resume=args.resume)
    return weights


def save_evaluated_model(cfg, model, weights: Optional[str]) -> str:
    """Write the evaluated model (unknown thresholds, post-fit buffers) like the torchvision
    backend: into ``weights`` itself when it lies in ``OUTPUT_DIR`` (its other entries, e.g. the
    optimizer state, are kept), else to ``OUTPUT_DIR/model_final.pth``. Main process only."""
    out = cfg.OUTPUT_DIR
    local = weights and os.path.isfile(weights)
    in_out = local and os.path.abspath(os.path.dirname(weights)) == os.path.abspath(out)
    path = weights if in_out else os.path.join(out, "model_final.pth")
    if not comm.is_main_process():
        return path
    old: Dict[str, Any] = {}
    if os.path.isfile(path):
        try:
            old = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not ours / unreadable: replaced, with a warning
            logger.warning("could not read %s (%s); writing a fresh checkpoint", path, e)
            old = {}
    m = _unwrap(model)
    ckpt = dict(old) if isinstance(old, dict) else {}
    ckpt["model"] = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    ckpt["ood_det"] = ood_checkpoint_metadata(cfg, m)
    ckpt["cfg"] = cfg.dump()
    os.makedirs(out, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    logger.info("model with unknown thresholds saved to %s", path)
    return path


def run(args) -> Dict[str, float]:
    """Train (unless ``--eval-only``) and evaluate in this process; returns the flat metrics."""
    args = _normalize_args(args)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        weights = _load_for_eval(cfg, model, args)
        metrics = evaluate_ood(cfg, model, output_dir=cfg.OUTPUT_DIR, weights=weights)
        save_evaluated_model(cfg, model, weights)
        comm.synchronize()
        return flat_metrics(metrics)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return getattr(trainer, "_last_eval_results", None) or {}


def main(args=None):
    """Entry point: ``args`` is an ``argparse.Namespace`` (from
    :func:`ood_det.engine.launch.default_argument_parser`) or a list of strings. Several
    processes go through detectron2's ``launch`` (training: one CUDA device per process;
    ``--eval-only`` also on CPUs, gloo); one process returns the metrics."""
    args = _normalize_args(args)
    world = int(args.num_gpus) * int(args.num_machines)
    if world <= 1:
        return run(args)
    if not args.eval_only:
        from ..config import load_config

        cfg = load_config(args.config_file or None, args.opts)
        if resolve_device(cfg) == "cpu":
            # DefaultTrainer wraps the model with DistributedDataParallel(device_ids=[local rank]),
            # which torch refuses for CPU modules
            raise ValueError(
                f"--num-gpus {args.num_gpus} --num-machines {args.num_machines}: detectron2's trainer "
                "needs one CUDA device per process (MODEL.DEVICE resolves to 'cpu' here). Train with "
                "--num-gpus 1 on a CPU (several CPU processes work for --eval-only), or use "
                "BACKEND: torchvision, whose trainer runs gloo processes on CPUs."
            )
    launch(
        run,
        int(args.num_gpus),
        num_machines=int(args.num_machines),
        machine_rank=int(args.machine_rank),
        dist_url=args.dist_url,
        args=(args,),
    )
    return None


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
