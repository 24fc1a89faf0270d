"""Benchmark: search with weights inherited from the teacher, against the same students from scratch.

    .venv/bin/python bench/inherit.py [--teacher teachers/cifar_vit.safetensors] [--model cifar_vit]
                                      [--budgets 50%,25%] [--trials 5] [--steps 150] [--train N] [--val N]
                                      [--home DIR] [--json OUT.json]

For each MACs budget (50 % and 25 % of the teacher) it runs a search of the teacher's blocks
(``--model``: the shipped ViT ``cifar_vit`` by default -- depth, heads, MLP width; ``convnext_atto``
with the checkpoint of ``studies/teach_convnext_cifar10.yaml`` -- depth and MLP width; ``regnety_002``
with that of ``studies/teach_regnet_cifar10.yaml`` -- depth and grouped bottleneck width) through the
library API, students inheriting the teacher's weights: the study's baselines (uniform, global
magnitude, depth) first, then TPE. Every student that search trained is then trained again by the
same proxy (same steps, batch, images and views, teacher logits from the same cache):

* **scratch** -- the same structure cut from a freshly initialised ``--model``, at the proxy's
  from-scratch learning rate (AdamW 1e-3 against 5e-4 inherited: each side at its own rate);
* **feature KD** -- inherited again, with feature KD added to the logit KD (``proxy.feature_kd``:
  for a ViT, token hidden-state MSE through a learned projection and attention-map KL per kept head;
  for a CNN, FitNets' MSE on every stage's output).

It prints one row per student (MACs, inherited, scratch, the gap, with feature KD) and per budget
the smallest and the mean gap, and the mean change that feature KD makes. Data: ``train.npz[:10000]``
for training (2 augmented views), ``test.npz[:2000]`` to score, as ``bench/tradeoffs.py`` (``--train``, ``--val``).
Everything goes to a private ``$STRUCTSEARCH_HOME`` (``--home``, default a fresh temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN = SHARED / "data" / "cifar10" / "train.npz"
TEST = SHARED / "data" / "cifar10" / "test.npz"
BUDGETS = ("50%", "25%")
#: AdamW rates of the proxy: inherited students (a gentle fine-tune) and students from scratch.
LR_INHERITED, LR_SCRATCH = 0.0005, 0.001


def study_spec(teacher: Path, budget: str, args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One budget's study; ``variant`` ``scratch`` cuts students from a fresh ``--model`` instead of the
    teacher (``student.inherit: false``), ``feature_kd`` adds feature KD."""
    raw: dict[str, Any] = {
        "name": f"{args.model}-inherit-{budget.rstrip('%')}pct-{variant}",
        "teacher": {"model": args.model, "kwargs": {"num_classes": 10}, "checkpoint": str(teacher)},
        "data": {"train": f"npz:{TRAIN}[:{args.train}]", "val": f"npz:{TEST}[:{args.val}]"},
        "budget": {"flops": budget},
        "objectives": ["accuracy", "macs"],
        "trials": args.trials,
        "proxy": {
            "steps": args.steps,
            "batch_size": 64,
            "optimizer": "adamw",
            "lr": LR_SCRATCH if variant == "scratch" else LR_INHERITED,
            "feature_kd": variant == "feature_kd",
        },
        "measure": {"latency": False, "memory": False},
        "baselines": ["uniform", "global_magnitude", "depth"],
        "warm_start": False,
        "seed": 0,
    }
    if variant == "scratch":
        raw["student"] = {"inherit": False}
    return raw


def run_budget(teacher: Path, budget: str, args: argparse.Namespace) -> dict[str, Any]:
    """The inherited search, then its students from scratch and with feature KD."""
    from structsearch.search import parse_study_spec, run_search
    from structsearch.search.context import build_context, plan_search
    from structsearch.search.results import scored, study_records
    from structsearch.space import ArchSpec
    from structsearch.surgery import build_student

    t0 = time.perf_counter()
    study = run_search(parse_study_spec(study_spec(teacher, budget, args, "inherited"), "bench spec"))
    trained = [r for r in scored(study_records(study)) if r.trained and r.spec is not None]
    if not trained:
        raise SystemExit(f"the {budget} search trained no student: nothing to compare")
    rows: list[dict[str, Any]] = [
        {"trial": r.trial, "baseline": r.baseline, "macs": r.macs, "inherited": r.score} for r in trained
    ]
    seconds = {"search": round(time.perf_counter() - t0, 1)}
    for variant in ("scratch", "feature_kd"):
        t0 = time.perf_counter()
        plan = plan_search(parse_study_spec(study_spec(teacher, budget, args, variant), "bench spec"))
        ctx = build_context(plan)
        for row, r in zip(rows, trained, strict=True):
            assert r.spec is not None
            student = build_student(ctx.base, ArchSpec.from_dict(r.spec))
            row[variant] = ctx.distiller.score(student).val_top1
            print(f"  {budget} trial {r.trial} {variant}: {row[variant]:.2f}%", flush=True)
        seconds[variant] = round(time.perf_counter() - t0, 1)
    gaps = [row["inherited"] - row["scratch"] for row in rows]
    fkd = [row["feature_kd"] - row["inherited"] for row in rows]
    return {
        "study": study.study_name,
        "teacher_macs": study.user_attrs.get("teacher_macs"),
        "students": rows,
        "min_gap": min(gaps),
        "mean_gap": statistics.fmean(gaps),
        "mean_feature_kd_change": statistics.fmean(fkd),
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=ROOT / "teachers" / "cifar_vit.safetensors")
    ap.add_argument("--model", default="cifar_vit", help="the teacher's model (10 classes), also the scratch base")
    ap.add_argument("--budgets", default=",".join(BUDGETS), help="MACs budgets, comma-separated")
    ap.add_argument("--trials", type=int, default=5, help="trials per budget, the 3 baselines included")
    ap.add_argument("--steps", type=int, default=150, help="proxy steps per student (batch 64)")
    ap.add_argument("--train", type=int, default=10_000, help="training images, train.npz[:N]")
    ap.add_argument("--val", type=int, default=2_000, help="scoring images, test.npz[:N]")
    ap.add_argument("--home", help="STRUCTSEARCH_HOME (default: a fresh temporary one)")
    ap.add_argument("--json", type=Path, help="write every figure and timing here")
    args = ap.parse_args()
    if not args.teacher.is_file():
        raise SystemExit(f"{args.teacher} does not exist (train it: structsearch teach studies/teach_*_cifar10.yaml)")
    os.environ["STRUCTSEARCH_HOME"] = args.home or tempfile.mkdtemp(prefix="bench-inherit-")

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    from structsearch.errors import StructsearchError, one_line

    try:
        results = {budget: run_budget(args.teacher, budget, args) for budget in args.budgets.split(",")}
    except StructsearchError as e:  # a budget below the smallest student, a bad checkpoint: one line
        raise SystemExit(f"error: {one_line(e)}") from None
    print("\nbudget  trial  baseline          MMACs  inherited  scratch    gap  +feature KD")
    for budget, res in results.items():
        for row in res["students"]:
            print(
                f"{budget:>6s}  {row['trial']:5d}  {row['baseline'] or 'searched':16s} {row['macs'] / 1e6:6.1f}  "
                f"{row['inherited']:8.2f}%  {row['scratch']:6.2f}%  {row['inherited'] - row['scratch']:+5.2f}  "
                f"{row['feature_kd']:8.2f}%"
            )
        print(
            f"{budget:>6s}  inherited - scratch: min {res['min_gap']:+.2f}, mean {res['mean_gap']:+.2f} points; "
            f"feature KD - logit KD: mean {res['mean_feature_kd_change']:+.2f} points; seconds {res['seconds']}"
        )
    total = time.perf_counter() - t0
    print(f"total: {total / 60:.1f} min", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"args": {k: str(v) for k, v in vars(args).items()}, "budgets": results, "seconds": round(total, 1)}
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
