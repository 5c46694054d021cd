#!/usr/bin/env python
"""DigitsOOD benchmark that can rank OOD methods: every variant x several seeds, near- and far-OOD,
covariate shift, paired comparisons against the baselines.

    .venv/bin/python benchmarks/digits_ood.py                        # 8 variants x 5 seeds, 2 jobs
    .venv/bin/python benchmarks/digits_ood.py --seeds 3 --variants softmax isomaxplus --jobs 1
    .venv/bin/python benchmarks/digits_ood.py --split val --seeds 2 --variants softmax energy vos vos_plus_energy

``--split val`` scores every run on validation data only (ID val, ``digits_ood_val_ood``,
``digits_ood_val_far``) and writes neither the README section nor the plot: it is the split for
choosing hyper-parameters. The ablations of ``configs/Digits-OOD/ablations/`` are variants too,
run only when named.

Each variant is a config of ``configs/Digits-OOD`` run by ``tools/train_net.py`` in its own process
(``OUTPUT_DIR = <out>/<variant>/seed<k>``; a run with a ``metrics.json`` is reused, so an
interrupted benchmark resumes). ``--jobs 2`` runs two single-threaded processes side by side
(about 1.5x the throughput of one two-threaded process on 2 cores). "softmax + energy" is the
softmax network of the same seed scored with the energy score (post-hoc: no separate training).

Per variant, mean ± standard deviation over seeds of: ID mAP50 (VOC AP50 on the ID test split),
FPR95 / AUROC on near-OOD (``digits_ood_ood``: unknown digits) and on far-OOD (``digits_ood_far``:
patches of real photographs), and the share of covariate-shifted ID boxes (``digits_ood_shift``)
flagged unknown at the stored 95%-TPR threshold. Every seed trains every variant on the same data,
so variants are compared pairwise per seed: a difference is marked real only when the mean paired
difference exceeds twice its standard error. Writes ``<out>/results.json``, ``<out>/table.md``,
the plot ``benchmarks/digits_ood_fpr95.png`` and the DigitsOOD section of ``benchmarks/README.md``
(between its marker comments). Hyper-parameters are never chosen on these test splits: the
validation splits ``digits_ood_val_ood`` / ``digits_ood_val_far`` exist for that.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "Digits-OOD"
README = REPO / "benchmarks" / "README.md"
PLOT = REPO / "benchmarks" / "digits_ood_fpr95.png"
BEGIN, END = "<!-- digits_ood:begin -->", "<!-- digits_ood:end -->"
NEAR, FAR, SHIFT = "digits_ood_ood", "digits_ood_far", "digits_ood_shift"
#: ``--split val``: the validation OOD splits (for choosing hyper-parameters; no shift split there)
VAL_ID, VAL_NEAR, VAL_FAR = "digits_ood_val", "digits_ood_val_ood", "digits_ood_val_far"
BASELINES = ("softmax", "energy")

#: variant -> (config, label, score override or None, trained run it reuses or None)
VARIANTS: Dict[str, Tuple[str, str, Optional[str], Optional[str]]] = {
    "softmax": ("softmax.yaml", "softmax + MSP", None, None),
    "energy": ("softmax.yaml", "softmax + energy score", "energy", "softmax"),
    "isomax": ("isomax.yaml", "IsoMax (entropic)", None, None),
    "isomaxplus": ("isomaxplus.yaml", "IsoMax+ (min. distance)", None, None),
    "dismax": ("dismax.yaml", "DisMax + FPR (MMLES)", None, None),
    "cfl": ("cfl.yaml", "CFL (energy + representation)", None, None),
    "vos": ("vos.yaml", "VOS (virtual outliers, energy)", None, None),
    "greg": ("greg.yaml", "GReg+ (energy)", None, None),
}
#: ablations, ``configs/Digits-OOD/ablations/<name>.yaml``: selectable with --variants, not run by default
ABLATION_LABELS: Dict[str, str] = {
    "vos_plus_energy": "VOS + energy margin",
    "vos_energy_only": "VOS, energy margin only",
    "vos_half": "VOS, outliers from half-way",
    "greg_no_sampling": "GReg (no GReg+ sampling)",
    "greg_no_grad": "GReg+ without gradient penalty",
    "greg_energy_01": "GReg+, energy margin 0.1 (authors')",
    "dismax_t1": "DisMax, MMLES at T = 1",
    "dismax_no_fpr": "DisMax without FPR",
    "cfl_distance": "CFL, distance classifier (head defaults)",
    "cfl_distance_small": "CFL, distance classifier, unit-norm centres",
    "cfl_std1": "CFL, centres N(0, 1)",
    "cfl_no_outliers": "CFL without the outlier margin",
    "cfl_no_hinge": "CFL (distance) without outlier terms",
    "cfl_weak_outliers": "CFL (distance), outlier terms x 0.1",
    "isomaxplus_small": "IsoMax+, unit-norm prototypes",
    "dismax_small": "DisMax, unit-norm prototypes",
}
ABLATIONS = {name: (f"ablations/{name}.yaml", label, None, None) for name, label in ABLATION_LABELS.items()}
DEFAULT_VARIANTS = list(VARIANTS)
VARIANTS.update(ABLATIONS)
METRICS = ("map50", "near_fpr95", "near_auroc", "far_fpr95", "far_auroc", "shift_flagged")
LOWER_IS_BETTER = {"near_fpr95", "far_fpr95", "shift_flagged"}


# ------------------------------------------------------------------------------ statistics
def mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    """Mean and sample standard deviation (ddof 1) of the finite values, and their count."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None, 0
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else None
    return m, s, len(v)


def paired(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Paired comparison of per-seed values ``a`` vs ``b`` (same seeds, same order): the mean of
    ``a - b``, its standard error (std of the differences / sqrt(n)) and ``real`` = |mean| > 2 SE."""
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    m, s, n = mean_std(d)
    if m is None:
        return {"diff": None, "se": None, "n": 0, "real": False}
    se = s / math.sqrt(n) if s is not None else None
    real = bool(se is not None and n >= 2 and abs(m) > 2 * se) or bool(se == 0.0 and m != 0.0)
    return {"diff": m, "se": se, "n": n, "real": real}


def run_row(metrics: dict, score: str, near: str = NEAR, far: str = FAR) -> Dict[str, Optional[float]]:
    """The benchmark's numbers of one run (one metrics.json) for ``score``; ``near`` / ``far``
    name the OOD datasets (the test splits, or the validation ones with ``--split val``)."""
    res = metrics.get("results", {}) if metrics else {}

    def ood(name, key):
        return res.get(name, {}).get("ood", {}).get(score, {}).get(key)

    first = res.get(near) or next(iter(res.values()), {})
    shift = (metrics or {}).get("covariate_shift", {}).get(SHIFT, {})
    return {
        "map50": first.get("detection", {}).get("voc", {}).get("map50"),
        "near_fpr95": ood(near, "fpr95"), "near_auroc": ood(near, "auroc"),
        "far_fpr95": ood(far, "fpr95"), "far_auroc": ood(far, "auroc"),
        "shift_flagged": shift.get(score),
    }


def aggregate(per_seed: Dict[str, List[Dict[str, Optional[float]]]]) -> Dict[str, dict]:
    """``{variant: {metric: (mean, std, n)}}`` and the paired comparisons against the baselines."""
    out = {}
    for v, rows in per_seed.items():
        out[v] = {"stats": {m: mean_std([r[m] for r in rows]) for m in METRICS}, "vs": {}}
        for base in BASELINES:
            if base in per_seed and base != v:
                out[v]["vs"][base] = {m: paired([r[m] for r in rows], [r[m] for r in per_seed[base]])
                                      for m in METRICS}
    return out


def _fmt(stat, pct=True) -> str:
    m, s, _ = stat
    if m is None:
        return "-"
    f = 100.0 if pct else 1.0
    return f"{f * m:.1f}" + (f" ± {f * s:.1f}" if s is not None else "")


def _cmp(p) -> str:
    if p["diff"] is None:
        return "-"
    mark = " **real**" if p["real"] else ""
    se = f" ± {100 * p['se']:.1f}" if p["se"] is not None else ""
    return f"{100 * p['diff']:+.1f}{se}{mark}"


def markdown(agg: Dict[str, dict], scores: Dict[str, str], n_seeds: int) -> str:
    lines = ["| variant | score | ID mAP50 | near FPR95 ↓ | near AUROC ↑ | far FPR95 ↓ | far AUROC ↑ | "
             "shift flagged ↓ |", "|---|---|---|---|---|---|---|---|"]
    for v, a in agg.items():
        s = a["stats"]
        lines.append(f"| {VARIANTS[v][1]} | `{scores[v]}` | " + " | ".join(_fmt(s[m]) for m in METRICS) + " |")
    lines += ["", f"Paired differences over {n_seeds} seeds (variant - baseline, percentage points, ± standard "
              "error; **real** = |mean| > 2 SE):", "",
              "| variant | vs | ΔmAP50 | Δnear FPR95 | Δfar FPR95 | Δshift flagged |", "|---|---|---|---|---|---|"]
    for v, a in agg.items():
        for base, c in a["vs"].items():
            lines.append(f"| {VARIANTS[v][1]} | {VARIANTS[base][1]} | {_cmp(c['map50'])} | {_cmp(c['near_fpr95'])} | "
                         f"{_cmp(c['far_fpr95'])} | {_cmp(c['shift_flagged'])} |")
    return "\n".join(lines)


def plot(agg: Dict[str, dict], path: Path) -> Path:
    """FPR95 per variant, near and far, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(agg)
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    for off, key, label in ((-0.18, "near_fpr95", "near-OOD (unknown digits)"),
                            (0.18, "far_fpr95", "far-OOD (photographs)")):
        m = [100 * (agg[n]["stats"][key][0] or float("nan")) for n in names]
        e = [100 * (agg[n]["stats"][key][1] or 0.0) for n in names]
        ax.bar([i + off for i in x], m, width=0.36, yerr=e, capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([VARIANTS[n][1] for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("FPR95 (%) ↓")
    ax.set_title("DigitsOOD: FPR95 per variant, mean ± std over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- runs
def run_one(variant: str, seed: int, out: Path, opts: Sequence[str], threads: int, force: bool) -> Tuple[dict, bool]:
    """Train and evaluate one run (or reuse its ``metrics.json``): ``(metrics, trained now)``;
    ``({}, True)`` when the run failed."""
    cfg_file = VARIANTS[variant][0]
    run_dir = out / variant / f"seed{seed}"
    metrics_file = run_dir / "metrics.json"
    reuse = metrics_file.is_file() and not force
    if reuse:
        print(f"[{variant} seed {seed}] reusing {metrics_file}", flush=True)
    else:
        cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config", str(CONFIGS / cfg_file),
               "SEED", str(seed), "OUTPUT_DIR", str(run_dir), *opts]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        print(f"[{variant} seed {seed}] started", flush=True)
        with open(run_dir / "stdout.txt", "w") as log:
            rc = subprocess.run(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"[{variant} seed {seed}] FAILED (exit {rc}) after {wall:.0f} s: see {run_dir / 'stdout.txt'}",
                  flush=True)
            return {}, True
        (run_dir / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
        print(f"[{variant} seed {seed}] done in {wall:.0f} s", flush=True)
    with open(metrics_file, encoding="utf-8") as f:
        return json.load(f), not reuse


def recorded_run_seconds(out: Path, jobs: Sequence[Tuple[str, int]]) -> float:
    """Sum of the ``wall_seconds.txt`` every run wrote when it was trained (0 where missing)."""
    total = 0.0
    for variant, seed in jobs:
        path = out / variant / f"seed{seed}" / "wall_seconds.txt"
        if path.is_file():
            total += float(path.read_text(encoding="utf-8").strip() or 0)
    return total


def write_readme(section: str) -> None:
    text = README.read_text(encoding="utf-8") if README.is_file() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        a, rest = text.split(BEGIN, 1)
        _, b = rest.split(END, 1)
        text = a + block + b
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                   help="default: the 8 variants of the table; the ablations are opt-in")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2, one thread each)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="val: score on the validation OOD splits (digits_ood_val_ood / _val_far) to "
                        "choose hyper-parameters; writes neither README nor plot")
    p.add_argument("--score", default=None, help="report this score instead of each config's own")
    p.add_argument("--out", default=None,
                   help="default output/benchmarks/digits_ood (digits_ood_val with --split val)")
    p.add_argument("--force", action="store_true", help="retrain runs that already have metrics.json")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="config overrides passed to every run (after --variants, separate them with --)")
    a = p.parse_args(argv)
    if a.opts[:1] == ["--"]:  # argparse keeps the separator in a REMAINDER
        a.opts = a.opts[1:]
    val = a.split == "val"
    out = Path(a.out or REPO / "output" / "benchmarks" / ("digits_ood_val" if val else "digits_ood"))
    near, far = (VAL_NEAR, VAL_FAR) if val else (NEAR, FAR)
    # --split val: every number from validation data (ID val for mAP and the ID boxes, the
    # validation OOD splits), nothing from a test split
    run_opts = list(a.opts) + (["DATASETS.TEST", f'("{VAL_ID}",)',
                                "DATASETS.OOD_TEST", f'("{VAL_NEAR}", "{VAL_FAR}")',
                                "DATASETS.SHIFT_TEST", "()"] if val else [])
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(a.seeds))
    variants = list(a.variants)
    trained = sorted({VARIANTS[v][3] or v for v in variants}, key=list(VARIANTS).index)
    threads = 1 if a.jobs > 1 else 0
    jobs = [(v, s) for s in seeds for v in trained]
    t0 = time.perf_counter()
    if a.jobs > 1:  # generate the data once before the parallel runs race for it
        subprocess.run([sys.executable, "-c", "from ood_det.data.digits_ood import ensure_digits_ood, default_root;"
                        "ensure_digits_ood(default_root())"], check=True, cwd=str(REPO))
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = {job: pool.submit(run_one, *job, out, run_opts, threads or 2, a.force) for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    wall = time.perf_counter() - t0
    metrics = {job: r[0] for job, r in results.items()}
    n_trained = sum(1 for r in results.values() if r[1])
    run_seconds = recorded_run_seconds(out, jobs)

    per_seed, scores = {}, {}
    failed = [f"{v} seed {s}" for (v, s), m in metrics.items() if not m]
    for v in variants:
        src = VARIANTS[v][3] or v
        score = a.score or VARIANTS[v][2] or next(
            (metrics[(src, s)]["score"] for s in seeds if metrics[(src, s)]), "?")
        scores[v] = score
        per_seed[v] = [run_row(metrics[(src, s)], score, near, far) for s in seeds]
    agg = aggregate(per_seed)
    table = markdown(agg, scores, len(seeds))
    if failed:
        table += "\n\nFailed runs (left out of the statistics): " + ", ".join(failed)
    (out / "table.md").write_text(table + "\n")
    with open(out / "results.json", "w", encoding="utf-8") as f:
        json.dump({"seeds": seeds, "split": a.split, "opts": a.opts, "scores": scores, "per_seed": per_seed,
                   "aggregate": agg, "wall_seconds": wall}, f, indent=1)
    print(table)
    if val:
        print(f"validation splits ({near}, {far}); {len(jobs)} runs in {wall / 60:.1f} min; {out / 'table.md'}")
        return 0
    plot(agg, PLOT)
    print(f"plot: {PLOT}; {len(jobs)} runs in {wall / 60:.1f} min")
    if not a.no_readme:
        cmd = "    .venv/bin/python benchmarks/digits_ood.py" + (f" --seeds {a.seeds}" if a.seeds != 5 else "") + \
              (f" --variants {' '.join(variants)}" if variants != DEFAULT_VARIANTS else "") + \
              (f" {' '.join(a.opts)}" if a.opts else "")
        write_readme(f"""## DigitsOOD: every variant, {len(seeds)} seeds

{cmd}

Produced by the command above: {len(jobs)} training runs, {n_trained} of them trained by this
invocation in {wall / 60:.0f} min, the others reused from earlier ones (a run is retrained when its
`metrics.json` is missing, or with `--force`). The recorded times of all {len(jobs)} runs add up to
{run_seconds / 60:.0f} min, about {run_seconds / 60 / max(1, a.jobs):.0f} min of wall time from scratch on the 2 cores with {a.jobs} job(s) side by
side. Torchvision backend, `configs/Digits-OOD/<variant>.yaml`. Near-OOD:
unknown digits; far-OOD: patches of photographs; shift: known digits under contrast / noise / blur
changes, share of their boxes flagged unknown at the stored threshold (they should stay ID). VOS
protocol: boxes above the F1-optimal box confidence of ID val; FPR95 at the recall closest to 95%
(ID positive). Mean ± std over seeds; the plot is `benchmarks/digits_ood_fpr95.png`.

{table}
""")
        print(f"wrote the DigitsOOD section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
