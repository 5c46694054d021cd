"""Overhead of the OOD heads / regularizers in a detectron2 Faster R-CNN R50-FPN.

Builds detectron2's stock detector (``StandardROIHeads`` + ``FastRCNNOutputLayers``) and, from the
shipped ``configs/VOC-OOD/faster_rcnn_R_50_FPN_<variant>.yaml`` (weights not loaded), the OOD
detector of each variant; every model gets the stock model's weights for all shared parameters
(random init, one seed) and sees the same inputs. Times, interleaved round by round (stock, then
each variant, in a rotating order):

* inference: ``model.eval()`` forward of one image (detections + per-box OOD score), with
  ``SCORE_THRESH_TEST = 0`` so that every model sends the same number of candidates to NMS;
* training step: ``model.train()`` forward + backward of a batch (no optimizer step, so the
  weights stay identical), VOS / GReg in their active phase (iteration >= START_ITER, queues full).

The random-init RPN's box deltas are zeroed (proposals = anchors ranked by objectness) so that
the usual ~1000 test proposals / 512 sampled ROIs per image reach the box head, as with a trained
RPN. On the CPU, times are the thread CPU time of one intra-op thread (robust to other jobs).

Reports per variant (a) the box predictor's extra time (the only part that differs; measured
alone over many repetitions) relative to the whole stock detector, and (b) the median over rounds
of ``time(variant) / time(stock)`` of the whole detector (noisier).

    .venv/bin/python benchmarks/bench_d2_overhead.py --size 192 --rounds 6
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("softmax", "energy", "vos", "isomax", "isomaxplus", "dismax", "cfl", "greg")


def _cfg(variant, args):
    from ood_det.apps.config import load_config

    cfg = load_config(str(ROOT / "configs/VOC-OOD/faster_rcnn_R_50_FPN_softmax.yaml"
                          if variant == "stock" else ROOT / f"configs/VOC-OOD/faster_rcnn_R_50_FPN_{variant}.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = args.device
    cfg.INPUT.MIN_SIZE_TEST = args.size
    cfg.INPUT.MAX_SIZE_TEST = args.size
    # every candidate box goes to NMS in every model: at random init the number passing
    # detectron2's 0.05 differs between heads only through their confidence calibration, which
    # would dominate the comparison (0.05 is just above softmax's uniform 1/21)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    # unit-variance input: keeps the random-init (FrozenBN = identity) activations moderate
    cfg.MODEL.PIXEL_STD = [57.375, 57.120, 58.395]
    if variant == "stock":
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    return cfg


def _realistic_proposals(model):
    """Zero the RPN's box deltas: proposals = anchors ranked by (random) objectness, so that
    detectron2's usual 1000 proposals per test image (512 sampled ROIs per training image)
    survive NMS, as with a trained RPN (random deltas collapse every box onto the image)."""
    with torch.no_grad():
        d = model.proposal_generator.rpn_head.anchor_deltas
        d.weight.zero_()
        d.bias.zero_()


def _activate_outliers(model, feature_std):
    """Put VOS-type outlier sources past their warm-up with full queues (Gaussian features of
    the box head's scale)."""
    clf = model.roi_heads.box_predictor.box_classifier
    src = clf.outlier_source
    if src is None:
        return
    clf.iteration.fill_(int(src.start_iter))
    with torch.no_grad():
        src.queue.normal_(0.0, feature_std)
        src.count.fill_(src.queue.shape[1])
        src.recompute_statistics()


def _box_feature_std(model, inp):
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(inp)
        f = model.backbone(images.tensor)
        props, _ = model.proposal_generator(images, f, None)
        rh = model.roi_heads
        x = rh.box_head(rh.box_pooler([f[k] for k in rh.box_in_features], [p.proposal_boxes for p in props]))
    return float(x.std()), sum(len(p) for p in props)


def _inputs(args, n, seed):
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    s = args.size
    for _ in range(n):
        img = torch.randint(0, 256, (3, s, s), generator=g).float()
        k = 4
        xy = torch.rand(k, 2, generator=g) * s * 0.6
        wh = 16 + torch.rand(k, 2, generator=g) * s * 0.3
        inst = Instances((s, s))
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=s - 1)], 1))
        inst.gt_classes = torch.randint(0, 20, (k,), generator=g)
        batch.append({"image": img, "height": s, "width": s, "instances": inst})
    return batch


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(device):
    """Thread CPU time on the CPU (one intra-op thread runs in this thread, so other processes on
    a shared machine barely disturb it); wall time on CUDA."""
    return time.perf_counter if device.startswith("cuda") else time.thread_time


def _time_infer(model, inp, device):
    clock = _clock(device)
    model.eval()
    with torch.no_grad():
        _sync(device)
        t = clock()
        model(inp)
        _sync(device)
    return clock() - t


def _time_train(model, batch, device):
    from detectron2.utils.events import EventStorage

    clock = _clock(device)
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage():
        _sync(device)
        t = clock()
        losses = model(batch)
        sum(losses.values()).backward()
        _sync(device)
    return clock() - t


def _predictor_inputs(model, inp, train_batch, device):
    """Realistic box-predictor inputs taken from the stock model: ``(features [R, 1024],
    proposals)`` at test time (all proposals of one image) and in training (sampled ROIs with
    their ground truth)."""
    from detectron2.utils.events import EventStorage

    rh = model.roi_heads
    with torch.no_grad():
        model.eval()
        images = model.preprocess_image(inp)
        f = model.backbone(images.tensor)
        props, _ = model.proposal_generator(images, f, None)
        x = rh.box_head(rh.box_pooler([f[k] for k in rh.box_in_features], [p.proposal_boxes for p in props]))
        test = (x, props)
        model.train()
        images = model.preprocess_image(train_batch)
        f = model.backbone(images.tensor)
        gt = [b["instances"].to(device) for b in train_batch]
        with EventStorage():
            props, _ = model.proposal_generator(images, f, gt)
            props = rh.label_and_sample_proposals(props, gt)
        x = rh.box_head(rh.box_pooler([f[k] for k in rh.box_in_features], [p.proposal_boxes for p in props]))
        train = (x, props)
    model.eval()
    return test, train


def _time_predictor(pred, data, kind, device, reps):
    """Box predictor alone, ``reps`` times: forward + inference (test) or forward + losses +
    backward to the features (train)."""
    from ood_det.d2.output_layers import OODFastRCNNOutputLayers

    from detectron2.utils.events import EventStorage

    clock = _clock(device)
    feats, props = data
    ood = isinstance(pred, OODFastRCNNOutputLayers)
    kw = {"features": None} if ood else {}
    _sync(device)
    t = clock()
    for _ in range(reps):
        if kind == "infer":
            pred.eval()
            with torch.no_grad():
                if ood:
                    kw["features"] = feats
                pred.inference(pred(feats), props, **kw)
        else:
            pred.train()
            x = feats.detach().requires_grad_(True)
            if ood:
                kw["features"] = x
            with EventStorage():
                losses = pred.losses(pred(x), props, **kw)
            sum(losses.values()).backward()
    _sync(device)
    return (clock() - t) / reps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=320, help="image side (square images; VOC uses ~800)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--predictor-rounds", type=int, default=10)
    p.add_argument("--predictor-reps", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import ood_det.d2  # noqa: F401  (registers OODROIHeads)
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    stock = build_model(_cfg("stock", args))
    _realistic_proposals(stock)
    ref = stock.state_dict()
    models = {"stock": stock}
    infer_inp = [{k: x for k, x in b.items() if k != "instances"} for b in _inputs(args, 1, 1)]
    feature_std, n_props = _box_feature_std(stock, infer_inp)
    for v in args.variants:
        torch.manual_seed(0)
        m = build_model(_cfg(v, args))
        missing, unexpected = m.load_state_dict(ref, strict=False)
        assert all(k.startswith("roi_heads.box_predictor.cls_score") for k in missing), missing[:5]
        _activate_outliers(m, feature_std)
        models[v] = m
    n_shared = {v: sum(1 for k in m.state_dict() if k in ref) for v, m in models.items()}

    train_inp = _inputs(args, args.train_batch, 2)
    if args.device != "cpu":
        for b in train_inp:
            b["instances"] = b["instances"].to(args.device)

    names = list(models)
    times = {"infer": {n: [] for n in names}, "train": {n: [] for n in names}}
    kinds = ["infer"] + ([] if args.no_train else ["train"])
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for kind in kinds:
            for n in order:
                f = _time_infer if kind == "infer" else _time_train
                dt = f(models[n], infer_inp if kind == "infer" else train_inp, args.device)
                if r >= args.warmup:
                    times[kind][n].append(dt)
        print(f"round {r + 1}/{args.warmup + args.rounds} done", file=sys.stderr, flush=True)

    # box predictor alone: the only part that differs between the models (the ROI heads also pass
    # the features along); many repetitions resolve sub-millisecond differences
    test_data, train_data = _predictor_inputs(stock, infer_inp, train_inp, args.device)
    ptimes = {"infer": {n: [] for n in names}, "train": {n: [] for n in names}}
    for r in range(args.predictor_rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for kind in kinds:
            for n in order:
                pred = models[n].roi_heads.box_predictor
                ptimes[kind][n].append(_time_predictor(pred, test_data if kind == "infer" else train_data,
                                                       kind, args.device, args.predictor_reps))

    import detectron2

    try:
        commit = subprocess.run(["git", "-C", str(Path(detectron2.__file__).parents[1]), "rev-parse", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    med = statistics.median
    print(f"\ndetectron2 {detectron2.__version__} ({commit or 'commit unknown'}), torch {torch.__version__}, "
          f"device {args.device}, threads {args.threads}, image {args.size}x{args.size}, "
          f"train batch {args.train_batch}, {args.rounds} rounds (+{args.warmup} warm-up), "
          f"{n_props} test proposals, {len(train_data[0])} training ROIs, "
          f"{'wall' if args.device.startswith('cuda') else 'thread CPU'} time")
    line = f"stock detector: inference {1e3 * med(times['infer']['stock']):.1f} ms"
    if not args.no_train:
        line += f", training step {1e3 * med(times['train']['stock']):.1f} ms"
    line += (f"; stock box predictor: inference {1e3 * med(ptimes['infer']['stock']):.2f} ms"
             + ("" if args.no_train else f", training {1e3 * med(ptimes['train']['stock']):.2f} ms"))
    print(line)
    print("\n(a) predictor delta / whole-detector ratio: 1 + (predictor(variant) - predictor(stock)) / "
          "detector(stock), medians\n(b) whole detector, median of per-round ratios (IQR)\n")
    print("| variant | inference: delta ms, (a) | inference (b) | training: delta ms, (a) | training (b) |")
    print("|---|---|---|---|---|")
    for n in names[1:]:
        cells = []
        for kind in ("infer", "train"):
            if kind not in kinds:
                cells += ["-", "-"]
                continue
            delta = med(ptimes[kind][n]) - med(ptimes[kind]["stock"])
            comp = 1 + delta / med(times[kind]["stock"])
            ratios = [a / b for a, b in zip(times[kind][n], times[kind]["stock"])]
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            cells += [f"{1e3 * delta:+.2f} ms, {comp:.4f}x", f"{med(ratios):.3f}x ({q[0]:.3f}-{q[2]:.3f})"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\nshared tensors with the stock model: " + ", ".join(f"{n} {n_shared[n]}/{len(ref)}" for n in names[1:]))


if __name__ == "__main__":
    main()
