#!/usr/bin/env python
"""DigitsOOD benchmark: train + evaluate every head with the same seeds, write a table.

    .venv/bin/python benchmarks/digits_ood.py                   # all heads, seed 0
    .venv/bin/python benchmarks/digits_ood.py --seeds 0 1 2     # mean and std over seeds
    .venv/bin/python benchmarks/digits_ood.py --heads softmax isomaxplus --no-readme

Each head is one config of ``configs/Digits-OOD`` run by ``tools/train_net.py`` in its own process
(``OUTPUT_DIR = <out>/<head>/seed<seed>``, a finished run is reused unless ``--force``). The
"softmax + energy" row is the softmax+MSP model scored with the energy score (the same trained
network: ``energy.yaml`` only changes the score), unless ``--train-energy`` trains it separately.
Results go to ``<out>/results.json`` and to the "DigitsOOD" section of ``benchmarks/README.md``
(between the ``digits_ood`` marker comments; the rest of the file is left alone).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "Digits-OOD"
README = REPO / "benchmarks" / "README.md"
BEGIN, END = "<!-- digits_ood:begin -->", "<!-- digits_ood:end -->"

#: row name -> (config, label)
HEADS = {
    "softmax": ("softmax.yaml", "softmax + MSP"),
    "energy": ("energy.yaml", "softmax + energy score"),
    "vos": ("vos.yaml", "VOS (energy margin + virtual outliers)"),
    "isomax": ("isomax.yaml", "IsoMax (entropic score)"),
    "isomaxplus": ("isomaxplus.yaml", "IsoMax+ (min. distance)"),
    "dismax": ("dismax.yaml", "DisMax + FPR (MMLES)"),
    "cfl": ("cfl.yaml", "CFL + VOS outliers (cfl score)"),
    "greg": ("greg.yaml", "GReg+ (energy score)"),
}


def run_one(head: str, seed: int, out: Path, force: bool, extra) -> dict:
    cfg_file, _ = HEADS[head]
    run_dir = out / head / f"seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and not force:
        print(f"[{head} seed {seed}] reusing {metrics_file}", flush=True)
    else:
        cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config", str(CONFIGS / cfg_file),
               "SEED", str(seed), "OUTPUT_DIR", str(run_dir), *extra]
        print(f"[{head} seed {seed}] {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=str(REPO))
        (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    with open(metrics_file, encoding="utf-8") as f:
        metrics = json.load(f)
    import torch

    ck = torch.load(run_dir / "model_final.pth", map_location="cpu", weights_only=True)
    wall = run_dir / "wall_seconds.txt"
    train_s = ck.get("train_seconds")
    if train_s is None and (run_dir / "log.txt").is_file():  # older checkpoints: from the log
        import re

        found = re.findall(r"training done: \d+ iterations in ([\d.]+) s", (run_dir / "log.txt").read_text())
        train_s = float(found[-1]) if found else None
    return {
        "metrics": metrics,
        "train_seconds": train_s,
        "wall_seconds": float(wall.read_text()) if wall.is_file() else None,
    }


def row_of(metrics: dict, score: str) -> dict:
    ood_name = metrics["datasets"]["ood"][0]
    r = metrics["results"][ood_name]
    o = r.get("ood", {}).get(score, {})
    return {
        "map50": r.get("detection", {}).get("voc", {}).get("map50"),
        "fpr95": o.get("fpr95"),
        "auroc": o.get("auroc"),
        "aupr": o.get("aupr_in"),
        "n_id": o.get("n_id"),
        "n_ood": o.get("n_ood"),
    }


def _mean_std(vals):
    v = [x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    m = sum(v) / len(v)
    s = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else None
    return m, s


def _fmt(m, s, pct=True):
    if m is None:
        return "-"
    f = 100.0 if pct else 1.0
    return f"{f * m:.1f}" + (f" ± {f * s:.1f}" if s is not None else "")


def table(rows: dict, seeds) -> str:
    lines = ["| head | score | ID mAP50 | FPR95 ↓ | AUROC ↑ | AUPR-In ↑ | train time (s) |",
             "|---|---|---|---|---|---|---|"]
    for head, r in rows.items():
        lines.append(
            f"| {HEADS[head][1]} | `{r['score']}` | {_fmt(*r['map50'])} | {_fmt(*r['fpr95'])} | "
            f"{_fmt(*r['auroc'])} | {_fmt(*r['aupr'])} | {_fmt(*r['train_seconds'], pct=False)} |"
        )
    return "\n".join(lines)


def verdict(rows: dict) -> str:
    base = rows.get("softmax")
    if not base or base["fpr95"][0] is None:
        return "softmax + MSP missing: no comparison."
    cands = {h: r for h, r in rows.items() if h != "softmax" and r["fpr95"][0] is not None}
    if not cands:
        return "no other head finished."
    best = min(cands, key=lambda h: cands[h]["fpr95"][0])
    b = cands[best]
    ratio = b["fpr95"][0] / base["fpr95"][0] if base["fpr95"][0] > 0 else float("inf")
    dmap = 100 * (b["map50"][0] - base["map50"][0])
    ok = ratio <= 0.5 and dmap >= -1.0
    return (f"Best FPR95: {HEADS[best][1]}, {100 * b['fpr95'][0]:.1f} vs {100 * base['fpr95'][0]:.1f} for "
            f"softmax + MSP ({ratio:.2f}x), ID mAP50 {dmap:+.1f} points. Target (FPR95 at most half of MSP's, "
            f"mAP50 at most 1 point lower): {'met' if ok else 'not met'}.")


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", default=str(REPO / "output" / "benchmarks" / "digits_ood"))
    p.add_argument("--force", action="store_true", help="retrain runs that already have metrics.json")
    p.add_argument("--train-energy", action="store_true", help="train energy.yaml instead of reusing softmax")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--notes", default="", help="a paragraph appended to the README section")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides passed to every run")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    heads = list(args.heads)
    if "energy" in heads and not args.train_energy and "softmax" not in heads:
        heads.insert(0, "softmax")

    runs = {}
    t_start = time.perf_counter()
    for seed in args.seeds:
        for head in heads:
            if head == "energy" and not args.train_energy:
                continue
            runs[(head, seed)] = run_one(head, seed, out, args.force, args.opts)

    rows = {}
    for head in args.heads:
        per_seed = []
        for seed in args.seeds:
            src = ("softmax", seed) if head == "energy" and not args.train_energy else (head, seed)
            run = runs[src]
            score = "energy" if head == "energy" else run["metrics"]["score"]
            per_seed.append({**row_of(run["metrics"], score), "score": score,
                             "train_seconds": run["train_seconds"]})
        rows[head] = {k: _mean_std([r[k] for r in per_seed]) for k in ("map50", "fpr95", "auroc", "aupr",
                                                                       "train_seconds")}
        rows[head]["score"] = per_seed[0]["score"]
        rows[head]["per_seed"] = per_seed

    total = sum(r["wall_seconds"] or 0.0 for r in runs.values()) or (time.perf_counter() - t_start)
    with open(out / "results.json", "w", encoding="utf-8") as f:
        json.dump({"seeds": args.seeds, "opts": args.opts, "rows": rows}, f, indent=1)
    tab = table(rows, args.seeds)
    ver = verdict(rows)
    print(tab)
    print(ver)

    if not args.no_readme:
        import torch

        from ood_det.config import load_config

        base = load_config(str(CONFIGS / "softmax.yaml"), args.opts)
        n = rows[next(iter(rows))]["per_seed"][0]
        notes = ("\n" + args.notes.strip() + "\n") if args.notes.strip() else ""
        section = f"""## DigitsOOD

Every head trained and evaluated by `benchmarks/digits_ood.py` on DigitsOOD (known digits 0-4,
unknown digits 5-9, 128 x 128 canvases; train 1,500 / val 300 / test 300 / OOD 300 images),
torchvision backend, `configs/Digits-OOD/<head>.yaml` (ResNet-18-FPN from scratch,
{base.SOLVER.MAX_ITER} iterations of {base.SOLVER.IMS_PER_BATCH} images), seed(s) {', '.join(map(str, args.seeds))}{' (mean ± std)' if len(args.seeds) > 1 else ''}.
VOS box-level protocol: boxes kept above the F1-optimal confidence threshold of ID val; every kept
box on an ID test image is ID, every kept box on an OOD image is OOD ({n['n_id']} ID / {n['n_ood']} OOD
boxes for the first row); FPR95 at 95% ID TPR, AUROC, AUPR with ID positive. ID mAP50: VOC area AP
on the ID test split, all detections. "softmax + energy score" is the softmax + MSP network scored
with the energy score.

    .venv/bin/python benchmarks/digits_ood.py{' --seeds ' + ' '.join(map(str, args.seeds)) if args.seeds != [0] else ''}

{tab}

{ver}

Train time: seconds of the training loop alone (data generation, evaluation and start-up not
counted), on 2 CPU cores shared with other jobs whose load changed during the benchmark (so the
times say more about the load than about the heads); python {platform.python_version()}, torch
{torch.__version__}; all runs together took {total / 60:.0f} min of wall time.
{notes}"""
        write_readme(section)
        print(f"wrote the DigitsOOD section of {README}")


if __name__ == "__main__":
    main()
