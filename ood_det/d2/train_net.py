"""The detectron2 backend's entry points (``BACKEND: detectron2``), called by
:mod:`ood_det.apps.train` (``python tools/train_net.py --config X.yaml [--eval-only] [--resume]
[--num-gpus N] [KEY VALUE ...]``), which loads and checks the config once.

* :func:`new_config`: detectron2's config with the OOD keys (:func:`~ood_det.d2.config.add_ood_d2_config`);
* :func:`main`: train (unless ``--eval-only``) and evaluate, through detectron2's ``launch``;
* :class:`Trainer`: detectron2's ``DefaultTrainer`` whose ``test`` is the shared OOD protocol
  (:func:`ood_det.evaluation.driver.run_protocol` with :class:`~ood_det.d2.evaluation.D2ProtocolBackend`),
  whose checkpoints carry the ``ood_det`` metadata and the config (one format with the
  torchvision backend, :mod:`ood_det.engine.checkpoint`), and whose training log goes to
  ``OUTPUT_DIR/train_metrics.jsonl``. The final evaluation saves ``model_final.pth`` again with
  the unknown thresholds, the confidence threshold and the post-fit state;
* :func:`build_inference_model`: :class:`~ood_det.d2.inference.D2InferenceModel`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer, default_setup, hooks, launch
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from ..engine.checkpoint import checkpoint_metadata, evaluated_checkpoint_path
from ..engine.comm import resolve_device
from ..engine.output_lock import OutputDirLock
from ..evaluation.driver import run_id_evaluation, run_protocol
from .config import get_ood_d2_cfg
from .datasets import register_ood_datasets
from .evaluation import D2ProtocolBackend, OODEvaluator, flat_metrics
from .inference import D2InferenceModel

__all__ = ["Trainer", "new_config", "setup", "main", "run", "build_inference_model"]

logger = logging.getLogger("ood_det.d2")


def new_config():
    """detectron2's default config with the OOD keys."""
    return get_ood_d2_cfg()


def build_inference_model(cfg, class_names: Optional[Sequence[str]] = None) -> D2InferenceModel:
    """The detector in eval mode (``predict_images``), weights from ``MODEL.WEIGHTS`` if set."""
    return D2InferenceModel(cfg)


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
    backend = D2ProtocolBackend(cfg, model)
    meta = checkpoint_metadata(cfg, backend.box_classifier, backend.class_names)
    checkpointer.checkpointables["ood_det"] = _Constant(meta)
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

        return flatten_results(run_id_evaluation(self.cfg, D2ProtocolBackend(self.cfg, self.model)))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from ..heads import get_head_class

        return OODEvaluator(get_head_class(cfg.MODEL.OOD.HEAD).supported_scores, dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """The OOD evaluation of ``model`` (``evaluators`` are not used: the datasets and their
        roles come from ``DATASETS.TEST`` / ``DATASETS.OOD_TEST`` / ``TEST.OOD.VAL_DATASET``).
        Returns the flat float metrics (``<ood set>/<path>``), as ``EvalHook`` expects."""
        if evaluators is not None:
            logger.warning("Trainer.test: the given evaluators are ignored (OOD protocol)")
        # thresholds go into the model; model_final.pth is written again with them after
        # training (build_hooks), so nothing is saved here
        metrics = run_protocol(cfg, D2ProtocolBackend(cfg, model), output_dir=cfg.OUTPUT_DIR,
                               weights=os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
        return flat_metrics(metrics)

    def build_writers(self):
        out = self.cfg.OUTPUT_DIR
        writers = [CommonMetricPrinter(self.max_iter), JSONWriter(os.path.join(out, "train_metrics.jsonl"))]
        try:  # TensorBoard event files when tensorboard is installed (it is optional)
            import torch.utils.tensorboard  # noqa: F401  (tensorboard installed?)

            writers.append(TensorboardXWriter(out))
        except ImportError:
            pass
        return writers

    def build_hooks(self):
        ret = super().build_hooks()
        # periodic evaluations (TEST.EVAL_PERIOD) measure ID mAP only; the full OOD evaluation,
        # which fits post-training state (DisMax's temperature enters the loss), runs at the end
        for i, h in enumerate(ret):
            if isinstance(h, hooks.EvalHook):
                ret[i] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate_now)

        def resave_final(trainer):
            # EvalHook.after_train ran the final evaluation, which stored thresholds and post-fit
            # state in the model: write model_final.pth again with them (and the metadata with
            # the confidence threshold)
            if getattr(trainer, "_last_eval_results", None) is not None and trainer.iter + 1 >= trainer.max_iter:
                backend = D2ProtocolBackend(trainer.cfg, trainer.model)
                clf = backend.box_classifier
                extra = {"conf_thresh": clf.conf_threshold()} if clf.conf_threshold() is not None else {}
                trainer.checkpointer.checkpointables["ood_det"] = _Constant(
                    checkpoint_metadata(trainer.cfg, clf, backend.class_names, **extra))
                done = trainer.iter
                # the iteration detectron2's PeriodicCheckpointer gave model_final (resume-safe)
                trainer.iter = trainer.max_iter - 1
                try:
                    trainer.checkpointer.save("model_final", iteration=trainer.iter)
                finally:
                    trainer.iter = done

        ret.append(hooks.CallbackHook(after_train=resave_final))
        return ret


# ------------------------------------------------------------------------------ entry
def setup(cfg, args):
    """Finish ``cfg`` (loaded and checked by the entry point) for a detectron2 run: device
    resolved (``auto`` -> ``cuda`` / ``cpu``; ``cuda`` without CUDA is an error), datasets
    registered, detectron2's ``default_setup`` (logging, ``config.yaml``, seeding); frozen."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.BACKEND != "detectron2":
        raise ValueError(f"BACKEND={cfg.BACKEND!r}: ood_det.d2.train_net runs BACKEND: detectron2 configs only")
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE).type
    register_ood_datasets()
    default_setup(cfg, args)
    # ood_det's own messages (evaluation tables, post-fit results) go to the same log.txt
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ood_det", abbrev_name="ood")
    cfg.freeze()
    return cfg


def run(cfg, args) -> Dict[str, float]:
    """Train (unless ``args.eval_only``) and evaluate in this process, the main process holding the
    output folder's lock; returns the flat metrics."""
    lock = OutputDirLock(cfg.OUTPUT_DIR, "evaluation" if args.eval_only else "training")
    with lock if comm.is_main_process() else contextlib.nullcontext():
        return _run(cfg, args)


def _run(cfg, args) -> Dict[str, float]:
    cfg = setup(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
        if not os.path.isfile(weights) and not weights.startswith(("detectron2://", "http://", "https://")):
            raise FileNotFoundError(f"--eval-only: no weights at {weights!r} (set MODEL.WEIGHTS)")
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(weights, resume=args.resume)
        metrics = run_protocol(cfg, D2ProtocolBackend(cfg, model), output_dir=cfg.OUTPUT_DIR, weights=weights,
                               save_path=evaluated_checkpoint_path(cfg.OUTPUT_DIR, weights))
        comm.synchronize()
        return flat_metrics(metrics)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return getattr(trainer, "_last_eval_results", None) or {}


def main(cfg, args):
    """Run ``args`` (``eval_only``, ``resume``, ``num_gpus``, ``num_machines``, ``machine_rank``,
    ``dist_url``) on ``cfg``. Several processes go through detectron2's ``launch`` (training: one
    CUDA device per process; ``--eval-only`` also on CPUs, gloo); one process returns the metrics."""
    world = int(args.num_gpus) * int(args.num_machines)
    if world <= 1:
        return run(cfg, args)
    if not args.eval_only and resolve_device(cfg.MODEL.DEVICE).type == "cpu":
        # DefaultTrainer wraps the model with DistributedDataParallel(device_ids=[local rank]),
        # which torch refuses for CPU modules
        raise ValueError(
            f"--num-gpus {args.num_gpus} --num-machines {args.num_machines}: detectron2's trainer "
            "needs one CUDA device per process (MODEL.DEVICE resolves to 'cpu' here). Train with "
            "--num-gpus 1 on a CPU (several CPU processes work for --eval-only), or use "
            "BACKEND: torchvision, whose trainer runs gloo processes on CPUs."
        )
    launch(run, int(args.num_gpus), num_machines=int(args.num_machines), machine_rank=int(args.machine_rank),
           dist_url=args.dist_url, args=(cfg, args))
    return None
