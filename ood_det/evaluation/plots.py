"""ID-vs-OOD score plots: a histogram of both score distributions and the ROC curve (ID positive).

Drawn with matplotlib's object API on an Agg canvas, so no GUI backend is needed and pyplot's
global state is left alone.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from ._common import finite_1d
from .ood_metrics import ood_metrics

__all__ = ["plot_ood_scores"]


def _figure(size=(5.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_ood_scores(
    id_scores: Any,
    ood_scores: Any,
    out_dir: Union[str, os.PathLike],
    name: str = "ood_score",
    tpr: float = 0.95,
    bins: int = 100,
    threshold: Optional[float] = None,
) -> Dict[str, Path]:
    """Write ``<name>_hist.png`` (ID / OOD score histograms) and ``<name>_roc.png`` into ``out_dir``.

    Args:
        id_scores: ``[N_id]`` ID scores; ood_scores: ``[N_ood]`` OOD scores (higher = more ID).
        out_dir: created if needed.
        name: file-name stem and plot title (e.g. the score name).
        tpr: TPR of the operating point marked on both plots.
        threshold: an extra vertical line on the histogram (e.g. the unknown threshold from val).

    Returns:
        ``{"hist": path, "roc": path}``.
    """
    from sklearn.metrics import roc_curve

    s_id = finite_1d(id_scores, "id_scores")
    s_ood = finite_1d(ood_scores, "ood_scores")
    m = ood_metrics(s_id, s_ood, tpr=tpr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "score"
    title = f"{name}: FPR@{100 * tpr:g}TPR {100 * m['fpr95']:.2f}%, AUROC {100 * m['auroc']:.2f}%"

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    lo = min(s_id.min(), s_ood.min())
    hi = max(s_id.max(), s_ood.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    ax.hist(s_id, bins=edges, density=True, histtype="stepfilled", alpha=0.5, label=f"ID ({s_id.size})", color="tab:blue")
    ax.hist(s_ood, bins=edges, density=True, histtype="stepfilled", alpha=0.5, label=f"OOD ({s_ood.size})", color="tab:red")
    ax.axvline(m["threshold"], color="k", ls="--", lw=1, label=f"{100 * tpr:g}% TPR threshold")
    if threshold is not None:
        ax.axvline(threshold, color="tab:green", ls=":", lw=1.5, label="unknown threshold (val)")
    ax.set_xlabel("score (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    hist_path = out / f"{stem}_hist.png"
    fig.savefig(hist_path)

    y = np.r_[np.ones(s_id.size), np.zeros(s_ood.size)]
    fpr, tpr_curve, _ = roc_curve(y, np.r_[s_id, s_ood])
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr_curve, color="tab:blue", lw=1.5, label=f"AUROC {100 * m['auroc']:.2f}%")
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    ax.plot([m["fpr95"]], [tpr], "o", color="tab:red", label=f"FPR {100 * m['fpr95']:.2f}% at TPR {100 * tpr:g}%")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("FPR (OOD kept as ID)")
    ax.set_ylabel("TPR (ID kept)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    roc_path = out / f"{stem}_roc.png"
    fig.savefig(roc_path)
    return {"hist": hist_path, "roc": roc_path}
