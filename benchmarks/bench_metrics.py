"""Speed of ``ood_det.evaluation.ood_metrics`` against scikit-learn.

On ``--n`` ID + ``--n`` OOD scores (default 1M + 1M, ID ~ N(1, 1), OOD ~ N(0, 1); ``--decimals``
rounds them to create ties) it times, side by side:

* ``ood_metrics``: FPR95 + AUROC + AUPR-In + AUPR-Out + threshold (one sort, cumulative sums);
* ``sklearn roc_auc_score`` alone;
* the full scikit-learn reference: ``roc_curve`` (FPR95 and its threshold), ``roc_auc_score``,
  ``average_precision_score`` twice (AUPR-In, AUPR-Out).

Each repetition runs the three in a rotating order; the table reports the median time of each and
the median of the per-repetition ratios. It also checks that the values agree to 1e-9. Run:

    .venv/bin/python benchmarks/bench_metrics.py
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from tqdm import tqdm

from ood_det.evaluation import ood_metrics


def sklearn_reference(y, s, tpr=0.95):
    fpr, tpr_, thr = roc_curve(y, s, drop_intermediate=False)
    k = np.searchsorted(tpr_, tpr)
    return {
        "fpr95": float(fpr[k]),
        "threshold": float(thr[k]),
        "auroc": float(roc_auc_score(y, s)),
        "aupr_in": float(average_precision_score(y, s)),
        "aupr_out": float(average_precision_score(1 - y, -s)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="ID and OOD sample count (each)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--decimals", type=int, default=None, help="round scores (ties) to this many decimals")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    a = rng.normal(1.0, 1.0, args.n)
    b = rng.normal(0.0, 1.0, args.n)
    if args.decimals is not None:
        a, b = np.round(a, args.decimals), np.round(b, args.decimals)
    y = np.r_[np.ones(args.n), np.zeros(args.n)]
    s = np.r_[a, b]

    fns = {
        "ood_metrics (all four + threshold)": lambda: ood_metrics(a, b),
        "sklearn roc_auc_score alone": lambda: roc_auc_score(y, s),
        "sklearn reference (all four + threshold)": lambda: sklearn_reference(y, s),
    }
    names = list(fns)
    # warm-up (page faults, lazy imports) and the correctness check
    ours, ref = ood_metrics(a, b), sklearn_reference(y, s)
    diff = max(abs(ours[k] - ref[k]) for k in ref)
    times = {n: [] for n in names}
    for r in tqdm(range(args.repeat), desc="repetitions", leave=False):
        order = names[r % 3:] + names[: r % 3]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    base = times[names[0]]
    print(f"ood_metrics vs scikit-learn, {args.n:,} ID + {args.n:,} OOD scores"
          f"{'' if args.decimals is None else f' rounded to {args.decimals} decimals'}, "
          f"{args.repeat} repetitions")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}, "
          f"{os.cpu_count()} CPU(s)")
    print(f"max |ood_metrics - sklearn reference| = {diff:.2e}")
    print(f"{'':<42} {'median s':>9} {'x ood_metrics':>14}")
    for n in names:
        ratio = statistics.median(t / o for t, o in zip(times[n], base))
        print(f"{n:<42} {statistics.median(times[n]):9.3f} {ratio:14.2f}")
    if diff > 1e-9:
        raise SystemExit(f"values differ from the scikit-learn reference by {diff:.3e} > 1e-9")


if __name__ == "__main__":
    main()
