"""Benchmark: ViT feature KD -- does it pick better students, or make the chosen ones better? (issue 15)

    .venv/bin/python bench/feature_kd.py [--trials 8] [--epochs 1] [--home DIR] [--json OUT.json]

Two searches of ``studies/cifar10_vit.yaml`` (the shipped ViT teacher, students under 50 % of its
MACs, the study's 3 baselines then TPE), identical except ``proxy.feature_kd``: logit KD only (the
default) and logit KD plus ViT feature KD (token hidden-state MSE through a projection, attention-map
KL per kept head). From each study it takes the students a user would look at -- the Pareto-front
points within 5 proxy points of the study's best, and its best searched (non-baseline) student --
and fine-tunes every one of them **twice, by the same two recipes**: ``structsearch finetune``
with ``--no-feature-kd`` and with ``--feature-kd``, ``--epochs`` passes over all 50,000 training
images (batch 64, the study's AdamW at 5e-4), scored on ``test.npz[5000:]``, which no search looked at.

So the two questions come apart:

* **the fine-tune recipe**: the same student, fine-tuned with and without feature KD;
* **the proxy**: each study's students, fine-tuned by the same recipe -- does the feature-KD proxy
  find students that end better (at the budget, and at fewer MACs)?

Every step is a ``structsearch`` command (printed as it runs) in a private ``$STRUCTSEARCH_HOME``
(``--home``). Searches and fine-tunes resume, so a rerun with the same ``--home`` only re-reads
what is done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN = SHARED / "data" / "cifar10" / "train.npz"
TEST = SHARED / "data" / "cifar10" / "test.npz"
SPEC = ROOT / "studies" / "cifar10_vit.yaml"
CLI = [sys.executable, "-m", "structsearch.cli"]
#: Front points this close to a study's best proxy score are worth fine-tuning.
NEAR_BEST = 5.0
RECIPES = ("no-feature-kd", "feature-kd")


def run(argv: list[str]) -> tuple[Any, float]:
    """One CLI command with ``--format json``: its parsed output and its wall-clock seconds."""
    print("$ structsearch " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, *argv, "--format", "json"], cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        raise SystemExit(f"failed after {seconds} s: structsearch {' '.join(argv)}\n{proc.stderr[-2000:]}")
    print(f"  ({seconds} s)", flush=True)
    return json.loads(proc.stdout), seconds


def study_name(feature_kd: bool) -> str:
    return f"vit-fkd-{str(feature_kd).lower()}"


def study_spec(feature_kd: bool, trials: int, home: Path) -> Path:
    """``studies/cifar10_vit.yaml`` with absolute paths, ``trials`` and ``proxy.feature_kd`` set."""
    raw = yaml.safe_load(SPEC.read_text())
    raw["name"] = study_name(feature_kd)
    raw["trials"] = trials
    raw["teacher"]["checkpoint"] = str(ROOT / raw["teacher"]["checkpoint"])
    raw["data"] = {k: v.replace("../shared", str(SHARED)) for k, v in raw["data"].items()}
    raw["proxy"] = {**raw["proxy"], "feature_kd": feature_kd}
    path = home / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def chosen(feature_kd: bool) -> tuple[list[dict[str, Any]], int, float]:
    """The study's students worth fine-tuning (front points near its best, its best searched one),
    its teacher's MACs and the seconds its trials took (a resumed search's own time is not that)."""
    from structsearch.search.results import load_study, pareto_front, scored, study_records
    from structsearch.search.storage import open_storage

    study = study_name(feature_kd)
    st = load_study(study, open_storage(create=False))
    everything = study_records(st)
    records = scored(everything)
    best = max(r.score for r in records)
    picks = {r.trial: r for r in pareto_front(everything) if r.score >= best - NEAR_BEST}
    searched = [r for r in records if r.baseline is None]
    if searched:
        top = max(searched, key=lambda r: r.score)
        picks.setdefault(top.trial, top)
    rows = [
        {
            "study": study,
            "proxy_feature_kd": feature_kd,
            "trial": r.trial,
            "baseline": r.baseline,
            "macs": r.macs,
            "proxy": r.score,
        }
        for r in sorted(picks.values(), key=lambda r: r.macs)
    ]
    return rows, int(st.user_attrs["teacher_macs"]), round(sum(r.seconds or 0.0 for r in records), 1)


def finetune(row: dict[str, Any], recipe: str, epochs: int, home: Path) -> None:
    out = home / f"ft-{row['study']}-{row['trial']}-{recipe}"
    res, _seconds = run(
        [
            "finetune",
            "--study",
            row["study"],
            "--trial",
            str(row["trial"]),
            "--epochs",
            str(epochs),
            "--batch-size",
            "64",
            "--data",
            f"npz:{TRAIN}",
            "--test",
            f"npz:{TEST}[5000:]",
            f"--{recipe}",
            "--out",
            str(out),
        ]
    )
    row[recipe] = res["test_top1"]
    row[f"{recipe}_seconds"] = round(res["kd"]["train_seconds"], 1)
    row["teacher_top1"] = res["teacher_top1"]


def summary(rows: list[dict[str, Any]], teacher_macs: int) -> dict[str, Any]:
    """The recipe's effect per student, and each proxy's best student after each recipe."""
    out: dict[str, Any] = {
        "feature_kd_finetune_minus_logit": [round(r["feature-kd"] - r["no-feature-kd"], 2) for r in rows],
    }
    out["mean_finetune_gain"] = round(statistics.fmean(out["feature_kd_finetune_minus_logit"]), 2)
    out["best"] = []
    for feature_kd in (False, True):
        mine = [r for r in rows if r["proxy_feature_kd"] == feature_kd]
        for recipe in RECIPES:
            top = max(mine, key=lambda r: r[recipe])
            out["best"].append(
                {
                    "proxy_feature_kd": feature_kd,
                    "recipe": recipe,
                    "trial": top["trial"],
                    "top1": top[recipe],
                    "macs_share": round(top["macs"] / teacher_macs, 3),
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8, help="trials per study, the 3 baselines included")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning passes over the 50,000 training images")
    ap.add_argument("--home", type=Path, help="STRUCTSEARCH_HOME (default: a fresh temporary one)")
    ap.add_argument("--json", type=Path, help="write every figure and timing here")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="bench-feature-kd-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["STRUCTSEARCH_HOME"] = str(home)
    t0 = time.perf_counter()
    searches: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    teacher_macs = 0
    for fkd in (False, True):
        run(["search", str(study_spec(fkd, args.trials, home))])
        picks, teacher_macs, searches[f"feature_kd={fkd}"] = chosen(fkd)
        rows += picks
    for row in rows:
        for recipe in RECIPES:
            finetune(row, recipe, args.epochs, home)
    figures = summary(rows, teacher_macs)
    print("\nproxy            trial  baseline           MACs  proxy  fine-tuned: logit KD  + feature KD   change")
    for r in rows:
        print(
            f"{r['study']:15s} {r['trial']:6d}  {r['baseline'] or 'searched':16s} {r['macs'] / teacher_macs:5.1%} "
            f"{r['proxy']:6.2f}  {r['no-feature-kd']:20.2f}  {r['feature-kd']:12.2f}  "
            f"{r['feature-kd'] - r['no-feature-kd']:+6.2f}"
        )
    print(f"feature KD in the fine-tune, mean change: {figures['mean_finetune_gain']:+.2f} points")
    for b in figures["best"]:
        print(
            f"{study_name(b['proxy_feature_kd'])} best after {b['recipe']}: trial {b['trial']}, {b['top1']:.2f}% "
            f"at {b['macs_share']:.1%} of the MACs"
        )
    total = time.perf_counter() - t0
    print(f"seconds of the searches' trials: {searches}; this run: {total / 60:.1f} min", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"args": {k: str(v) for k, v in vars(args).items()}, "search_trial_seconds": searches}
        args.json.write_text(json.dumps({**out, "students": rows, "summary": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
