"""Cost of the OOD heads and regularizers relative to the stock softmax classifier.

Measures forward + backward of one ROI-head training step at R = 512 ROIs (25% foreground, as
detectron2's sampler), D = 1024, K = 20:

1. the classification head alone (softmax, isomax, isomaxplus, dismax, cfl), and each
   regularizer added to the softmax head, given ready outliers (20 VOS outliers; GReg+ gets
   8 x 20 = 160 candidates and k-means-samples 32 of them); the VOS synthesizer's own step
   (queue update + Gaussian fit + sampling) is timed separately;
2. the same with detectron2's 2-FC box head (12544 -> 1024 -> 1024, input gradient on, as when the
   backbone trains) in front: what a training step actually pays at the ROI head;
3. ``ood_det.evaluation.ood_metrics`` on 1M ID + 1M OOD scores vs scikit-learn's
   ``roc_auc_score`` (and vs the four scikit-learn calls that give the same metrics);
4. the torch k-means used by GReg+ vs scikit-learn's ``KMeans`` (160 x 1024, 32 clusters, 3 inits).

All variants of a table are timed side by side: each repetition runs every variant once (in a
rotating order); the tables give the median time, the median over repetitions of the ratio to
softmax timed in the same repetition, and the ratio of the minima. Run:

    .venv/bin/python benchmarks/bench_heads.py --threads 1
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ood_det.heads import build_head
from ood_det.regularizers import build_regularizer
from ood_det.regularizers.greg import kmeans
from ood_det.regularizers.vos import VirtualOutlierSynthesizer

R, D, K = 512, 1024, 20
FG_FRACTION = 0.25
HEADS = ("softmax", "isomax", "isomaxplus", "dismax", "cfl")
REGS = ("vos", "energy", "greg", "fpr")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def interleaved(variants: Dict[str, Callable[[], None]], reps: int, warmup: int, device, desc: str):
    """Median seconds per variant; every repetition runs all variants, in a rotating order."""
    names = list(variants)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for i in tqdm(range(warmup + reps), desc=desc, leave=False):
        shift = i % len(names)
        for n in names[shift:] + names[:shift]:
            dt = _timeit(variants[n], device)
            if i >= warmup:
                times[n].append(dt)
    return times


def _labels(device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    n_fg = int(R * FG_FRACTION)
    labels = torch.full((R,), K, dtype=torch.long)
    labels[:n_fg] = torch.randint(K, (n_fg,), generator=g)
    return labels[torch.randperm(R, generator=g)].to(device)


def build_variants(device, box_head: bool):
    torch.manual_seed(0)
    labels = _labels(device)
    if box_head:
        trunk = nn.Sequential(nn.Flatten(), nn.Linear(256 * 7 * 7, D), nn.ReLU(),
                              nn.Linear(D, D), nn.ReLU()).to(device)
        pooled = torch.randn(R, 256, 7, 7, device=device, requires_grad=True)
    else:
        trunk = None
        pooled = torch.relu(torch.randn(R, D, device=device)).requires_grad_(True)

    def features():
        return trunk(pooled) if trunk is not None else pooled

    def zero(*mods):
        pooled.grad = None
        for m in mods + ((trunk,) if trunk is not None else ()):
            for p in m.parameters():
                p.grad = None

    heads = {name: build_head(name, D, K).to(device) for name in HEADS}
    softmax = heads["softmax"]
    # outliers as a trained VOS synthesizer would hand them over (real features' statistics)
    g = torch.Generator().manual_seed(1)
    vos20 = (torch.relu(torch.randn(K, D, generator=g)) * 2.0).to(device)
    cand160 = (torch.relu(torch.randn(8 * K, D, generator=g)) * 2.0).to(device)
    regs = {name: build_regularizer(name, **({"num_classes": K} if name == "vos" else {})).to(device)
            for name in REGS}
    regs["greg (no sampling)"] = build_regularizer("greg", sampling=False).to(device)

    def head_step(head):
        def run():
            zero(head)
            f = features()
            logits = head(f)
            sum(head.loss(logits, labels, features=f).values()).backward()
        return run

    def reg_step(name):
        reg = regs[name]
        candidates = cand160 if name == "greg" else vos20

        def run():
            zero(softmax, reg)
            f = features()
            logits = softmax(f)
            losses = dict(softmax.loss(logits, labels, features=f))
            outliers = reg.select_outliers(softmax, candidates)
            losses.update(reg(softmax, f, logits, labels, outliers, 1))
            sum(losses.values()).backward()
        return run

    variants = {name: head_step(h) for name, h in heads.items()}
    for name in regs:
        variants[f"softmax+{name}"] = reg_step(name)

    # the VOS synthesizer's own step: enqueue the batch's foreground features, fit, sample
    synth = VirtualOutlierSynthesizer(D, K, start_iter=0).to(device)
    fill = torch.relu(torch.randn(K * synth.queue_size, D, generator=g)).to(device)
    synth.update(fill, torch.arange(K, device=device).repeat_interleave(synth.queue_size))
    fg = labels < K
    fg_feats = torch.relu(torch.randn(int(fg.sum()), D, generator=g)).to(device)

    def synth_step():
        synth.update(fg_feats, labels[fg])
        synth.sample(1)

    variants["vos synthesizer step"] = synth_step
    # (the first, warm-up call of each regularizer derives and freezes its energy margins)
    return variants


def table(times, base="softmax") -> str:
    """Median time, and the ratio to ``base`` two ways: the median over repetitions of the
    per-repetition ratio (variant and base timed in the same round, which cancels slow drifts of
    the machine's load) and the ratio of the minima (the least disturbed runs)."""
    lines = [f"{'variant':28s} {'median ms':>10s} {'min ms':>10s} {'x softmax':>10s} {'x (min)':>8s}"]
    b = times[base]
    for n, v in times.items():
        paired = statistics.median(t / tb for t, tb in zip(v, b))
        lines.append(f"{n:28s} {1e3 * statistics.median(v):10.2f} {1e3 * min(v):10.2f} "
                     f"{paired:10.3f} {min(v) / min(b):8.3f}")
    return "\n".join(lines)


def added_cost_table(alone, boxed, base="softmax") -> str:
    """Ratio to the box-head softmax step estimated as ``1 + (t_alone(v) - t_alone(base)) /
    t_box(base)`` from the medians: the box head's share is identical in every variant, so only
    the head's / regularizer's extra time matters, and it is measured where it is not buried under
    the box head's run-to-run noise."""
    med_a = {n: statistics.median(v) for n, v in alone.items()}
    box = statistics.median(boxed[base])
    lines = [f"{'variant':28s} {'+ms':>10s} {'x softmax':>10s}"]
    for n, m in med_a.items():
        extra = m if n == "vos synthesizer step" else m - med_a[base]
        lines.append(f"{n:28s} {1e3 * extra:10.2f} {1 + extra / box:10.3f}")
    return "\n".join(lines)


def bench_metrics(reps: int) -> str:
    try:
        from ood_det.evaluation.ood_metrics import ood_metrics
    except ImportError as e:  # written by another engineer
        return f"ood_metrics: skipped ({e})"
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    n = 1_000_000
    s_id = rng.normal(1.0, 1.0, n).astype(np.float32)
    s_ood = rng.normal(0.0, 1.0, n).astype(np.float32)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    s = np.concatenate([s_id, s_ood])

    def sk_all():
        roc_curve(y, s, drop_intermediate=False)
        roc_auc_score(y, s)
        average_precision_score(y, s)
        average_precision_score(1 - y, -s)

    cpu = torch.device("cpu")
    times = interleaved({"ood_metrics (4 metrics)": lambda: ood_metrics(s_id, s_ood),
                         "sklearn roc_auc_score": lambda: roc_auc_score(y, s),
                         "sklearn all 4 calls": sk_all}, reps, 1, cpu, "metrics")
    ours = ood_metrics(s_id, s_ood)["auroc"]
    assert abs(ours - roc_auc_score(y, s)) < 1e-9
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["sklearn roc_auc_score"]
    lines = [f"{'1M ID + 1M OOD scores':28s} {'median ms':>10s} {'x roc_auc':>10s}"]
    for k, m in med.items():
        lines.append(f"{k:28s} {1e3 * m:10.1f} {m / base:10.3f}")
    return "\n".join(lines)


def bench_kmeans(reps: int) -> str:
    from sklearn.cluster import KMeans

    x = torch.nn.functional.normalize(torch.relu(torch.randn(8 * K, D)), dim=1)
    xn = x.numpy()
    cpu = torch.device("cpu")
    times = interleaved({"torch kmeans (ours)": lambda: kmeans(x, 32, n_init=3),
                         "sklearn KMeans": lambda: KMeans(32, n_init=3).fit(xn)}, reps, 1, cpu, "kmeans")
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"{'k-means 160x1024, k=32, 3 init':28s} {'median ms':>10s} {'x sklearn':>10s}"]
    for k, m in med.items():
        lines.append(f"{k:28s} {1e3 * m:10.2f} {m / med['sklearn KMeans']:10.3f}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (default 1)")
    ap.add_argument("--reps", type=int, default=30, help="repetitions, heads alone")
    ap.add_argument("--box-reps", type=int, default=10, help="repetitions with the box head")
    ap.add_argument("--metric-reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip", nargs="*", default=(), choices=("heads", "box", "metrics", "kmeans"))
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {args.threads}, R={R} D={D} K={K}, "
          f"{int(R * FG_FRACTION)} foreground ROIs")
    alone = boxed = None
    if "heads" not in args.skip:
        print(f"\n== heads and regularizers alone (forward + backward), {args.reps} reps ==")
        alone = interleaved(build_variants(device, False), args.reps, 3, device, "heads")
        print(table(alone))
    if "box" not in args.skip:
        print(f"\n== with the 2-FC box head in front (12544 -> 1024 -> 1024), {args.box_reps} reps ==")
        boxed = interleaved(build_variants(device, True), args.box_reps, 2, device, "box head")
        print(table(boxed))
    if alone is not None and boxed is not None:
        print("\n== box-head step + the extra time measured alone (medians) ==")
        print(added_cost_table(alone, boxed))
    if "metrics" not in args.skip:
        print(f"\n== OOD metrics, {args.metric_reps} reps ==")
        print(bench_metrics(args.metric_reps))
    if "kmeans" not in args.skip:
        print(f"\n== GReg+ k-means, {args.reps} reps ==")
        print(bench_kmeans(args.reps))


if __name__ == "__main__":
    main()
