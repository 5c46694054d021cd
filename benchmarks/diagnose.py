#!/usr/bin/env python
"""Diagnosis figure of trained runs: OOD-score histograms of ID / near-OOD / far-OOD boxes and the
training loss curves, one column per run.

    .venv/bin/python benchmarks/diagnose.py output/benchmarks/digits_ood_val/{softmax,vos}/seed0 \\
        --out benchmarks/diagnosis_vos.png [--score energy]

Reads what every run of ``tools/train_net.py`` leaves in its OUTPUT_DIR: ``metrics.json`` (which
datasets played which role, the F1 box-confidence threshold, the stored unknown threshold),
``predictions/<dataset>.npz`` (every box with every score) and ``train_metrics.jsonl`` (losses).
The histograms show the boxes the OOD metric sees (box confidence >= the F1 threshold); the dashed
line is the unknown threshold stored from ID validation (95% of ID val boxes above it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def kept_scores(run: Path, dataset: str, score: str, conf: float) -> np.ndarray:
    """``[N]`` values of ``score`` of the boxes of ``dataset`` whose confidence is >= ``conf``."""
    from ood_det.evaluation.evaluator import Predictions

    preds = Predictions.load(run / "predictions" / f"{dataset}.npz")
    if score not in preds.score_names:
        raise SystemExit(f"{run}: score {score!r} not in {preds.score_names} of {dataset}")
    vals = [p["ood_scores"][score][p["scores"] >= conf] for p in (preds[i] for i in preds)]
    return np.concatenate(vals) if vals else np.zeros(0)


def loss_curves(run: Path) -> Dict[str, List[tuple]]:
    """``{loss name: [(iteration, value), ...]}`` from ``train_metrics.jsonl``."""
    curves: Dict[str, List[tuple]] = {}
    path = run / "train_metrics.jsonl"
    if not path.is_file():
        return curves
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k.startswith("loss_") and isinstance(v, (int, float)):
                curves.setdefault(k, []).append((rec["iteration"], float(v)))
    return curves


def diagnose(runs: List[Path], out: Path, score: Optional[str] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.4), squeeze=False)
    for col, run in enumerate(runs):
        m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        s = score or m["score"]
        roles = m["datasets"]
        first = m["summary"][roles["ood"][0]]
        conf = float(first["conf_thresh"])
        sets = {f"ID ({roles['test']})": kept_scores(run, roles["test"], s, conf)}
        for name in roles["ood"]:
            sets[name] = kept_scores(run, name, s, conf)
        allv = np.concatenate([v for v in sets.values() if v.size])
        edges = np.linspace(*np.percentile(allv, [0.5, 99.5]), 41)
        ax = axes[0, col]
        for (name, v), color in zip(sets.items(), ("tab:blue", "tab:orange", "tab:red", "tab:green")):
            fpr = m["results"].get(name, {}).get("ood", {}).get(s, {}).get("fpr95")
            label = f"{name} ({v.size})" + (f" FPR95 {100 * fpr:.0f}" if fpr is not None else "")
            ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, density=True, histtype="step", lw=1.5,
                    color=color, label=label)
        thr = first.get("unknown_threshold")
        if thr is not None and s == m["score"]:
            ax.axvline(thr, color="k", ls="--", lw=1)
        ax.set_title(f"{run.parent.name}/{run.name}: {s}", fontsize=9)
        ax.legend(fontsize=6)
        ax = axes[1, col]
        for name, pts in sorted(loss_curves(run).items()):
            it, val = zip(*pts)
            ax.plot(it, val, lw=1, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.legend(fontsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="OUTPUT_DIRs of finished runs")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--score", default=None, help="score to show (default: each run's own)")
    a = p.parse_args(argv)
    for r in a.runs:
        if not (r / "metrics.json").is_file():
            p.error(f"{r}: no metrics.json (not a finished run)")
    print(diagnose(a.runs, a.out, a.score))
    return 0


if __name__ == "__main__":
    sys.exit(main())
