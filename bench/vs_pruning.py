"""Benchmark: does the search beat one-shot structured pruning at the same budget and training?

    .venv/bin/python bench/vs_pruning.py [--teacher cifar_resnet56|cifar_resnet20] [--trials 30]
                                         [--budget 50%] [--json docs/results/vs_pruning.json]

1. Runs ``studies/cifar10_resnet56.yaml`` (its settings, 30 trials, in a fresh study of a private
   home; ``--teacher`` swaps in another shared CIFAR ResNet) and times it.
2. Takes the best *searched* student within the budget (not one of the study's enqueued baselines)
   and the study's own baselines (uniform, global magnitude, depth), plus global magnitude pruning
   at channel granularity (what Torch-Pruning's global group-L2 ranking keeps, off the width grid).
3. Gives every one of them the **same** short KD, independent of the search's proxy: 300 steps,
   batch 128, no augmentation, images ``train.npz[:10000]``, teacher logits precomputed, KL at T=4
   times T^2, SGD momentum 0.9 Nesterov, weight decay 5e-4, OneCycle to lr 0.05 with 15% warm-up,
   seed 0; and reports top-1 on ``test.npz[:5000]`` and ``test.npz[5000:]`` (the half no
   structure was selected on), MACs and params.

Prints the table, the gains of the searched student over each baseline at no more MACs, and
whether the acceptance holds (>= 90% of the budget, >= 1.0 point over global magnitude).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN = SHARED / "data" / "cifar10" / "train.npz"
TEST = SHARED / "data" / "cifar10" / "test.npz"
CHECKPOINTS = {
    "cifar_resnet56": SHARED / "weights" / "cifar_resnet" / "resnet56-4bfd9763.th",
    "cifar_resnet20": SHARED / "weights" / "cifar_resnet" / "resnet20-12fca82f.th",
}
#: The yardstick issue 11 measured: global magnitude pruning of ResNet-56 to 49.8% MACs + this KD.
REFERENCE = {"cifar_resnet56": 88.5}


def short_kd(
    student: nn.Module,
    teacher_logits: torch.Tensor,
    x: torch.Tensor,
    steps: int = 300,
    batch: int = 128,
    lr: float = 0.05,
    temperature: float = 4.0,
    seed: int = 0,
) -> float:
    """The fixed recipe; returns seconds. ``x`` is preprocessed (NCHW float), no augmentation."""
    torch.manual_seed(seed)
    student.train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=gen) for _ in range(steps * batch // len(x) + 1)])
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        out = student(x[idx].contiguous(memory_format=torch.channels_last))
        t = temperature
        loss = (
            F.kl_div(
                F.log_softmax(out / t, 1),
                F.log_softmax(teacher_logits[idx] / t, 1),
                log_target=True,
                reduction="batchmean",
            )
            * t
            * t
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - start


def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for s in range(0, len(x), 500):
            correct += int(
                (model(x[s : s + 500].contiguous(memory_format=torch.channels_last)).argmax(1) == y[s : s + 500]).sum()
            )
    return 100.0 * correct / len(x)


def channel_level_global_magnitude(teacher: nn.Module, plan: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Global magnitude pruning at channel granularity to the budget (widths off the grid)."""
    from structsearch.search.baselines import global_units
    from structsearch.space import ArchSpec, BlockSpec, family_for
    from structsearch.surgery import get_importance

    proposals = plan.proposals(None)
    kept = global_units(teacher, plan.space, proposals.model, proposals.caps())
    stages = [
        tuple(BlockSpec(True, kept[(i, j, "width")] / c.width_base, c.heads_base) for j, c in enumerate(stage))
        for i, stage in enumerate(plan.space.stages)
    ]
    spec = ArchSpec(plan.space.model, tuple(stages), plan.space.model_kwargs)
    student = copy.deepcopy(teacher)
    family_for(teacher).shrink(student, spec, get_importance("l1"))  # exact channel counts: no grid check
    return student, {
        "channels": {f"{i}.{j}": kept[(i, j, "width")] for i, s in enumerate(stages) for j in range(len(s))}
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="cifar_resnet56", choices=sorted(CHECKPOINTS))
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--budget", default="50%")
    ap.add_argument("--proxy-lr", type=float, help="override the spec's proxy lr (an experiment; default: the spec's)")
    ap.add_argument(
        "--proxy-steps", type=int, help="override the spec's proxy steps (an experiment; default: the spec's)"
    )
    ap.add_argument("--home", help="STRUCTSEARCH_HOME to search in (default: a fresh temporary one)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ["STRUCTSEARCH_HOME"] = args.home or tempfile.mkdtemp(prefix="vs-pruning-")

    from structsearch.cost import measure_cost
    from structsearch.data import Preprocess, load_data
    from structsearch.models import create_model
    from structsearch.search.context import plan_search
    from structsearch.search.results import study_records
    from structsearch.search.runner import run_search
    from structsearch.search.spec import load_study_spec
    from structsearch.space import ArchSpec
    from structsearch.surgery import build_student, get_importance

    spec = load_study_spec(ROOT / "studies" / "cifar10_resnet56.yaml")
    spec = spec.with_overrides(
        **{
            "name": f"vs-pruning-{args.teacher}",
            "trials": args.trials,
            "budget.flops": args.budget,
            "teacher.model": args.teacher,
            "teacher.checkpoint": str(CHECKPOINTS[args.teacher]),
            "proxy.lr": args.proxy_lr,
            "proxy.steps": args.proxy_steps,
        }
    )
    os.chdir(ROOT)  # the spec's data paths are relative to the project root
    t0 = time.perf_counter()
    study = run_search(spec, None)
    search_s = time.perf_counter() - t0
    plan = plan_search(spec)
    max_macs = plan.max_macs
    records = {r.trial: r for r in study_records(study)}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    baselines = {
        t.user_attrs["baseline"]: t
        for t in trials.values()
        if t.user_attrs.get("baseline") and t.user_attrs.get("trained")
    }
    searched = [
        r
        for n, r in records.items()
        if r.trained and r.feasible and r.score is not None and n not in {t.number for t in baselines.values()}
    ]
    best = max(searched, key=lambda r: r.score)
    macs_in_window = sum(1 for r in records.values() if r.macs and 0.9 * max_macs <= r.macs <= max_macs)
    print(
        f"search: {len(records)} trials in {search_s / 60:.1f} min; {macs_in_window} within [0.9, 1.0] x budget "
        f"({max_macs / 1e6:.1f}M MACs); best searched: trial {best.trial}, proxy {best.score:.2f}% at {best.macs / 1e6:.1f}M"
    )

    teacher = create_model(args.teacher, checkpoint=str(CHECKPOINTS[args.teacher])).eval()
    pre = Preprocess.from_model(teacher, (32, 32))
    train = load_data(f"npz:{TRAIN}[:10000]")
    test = load_data(f"npz:{TEST}")
    x_train = torch.cat([pre(b) for b in train.x.split(1000)])
    x_test = torch.cat([pre(b) for b in test.x.split(1000)])
    y_test = test.y
    with torch.inference_mode():
        teacher_logits = torch.cat([teacher(b) for b in x_train.split(500)])
    teacher_row = {
        "name": "teacher",
        "macs": plan.teacher_cost.macs,
        "params": plan.teacher_cost.params,
        "val": top1(teacher, x_test[:5000], y_test[:5000]),
        "test": top1(teacher, x_test[5000:], y_test[5000:]),
    }

    importance = get_importance(spec.importance, spec.seed)
    candidates: list[tuple[str, nn.Module, dict[str, Any]]] = []
    candidates.append(
        (
            f"searched (trial {best.trial})",
            build_student(teacher, ArchSpec.from_dict(best.spec), importance),
            {"trial": best.trial, "proxy": best.score},
        )
    )
    for name in ("global_magnitude", "uniform", "depth"):
        if name in baselines:
            t = baselines[name]
            candidates.append(
                (
                    f"{name} (trial {t.number})",
                    build_student(teacher, ArchSpec.from_dict(t.user_attrs["spec"]), importance),
                    {"trial": t.number, "proxy": t.user_attrs.get("score")},
                )
            )
    gm_student, gm_info = channel_level_global_magnitude(teacher, plan)
    candidates.append(("global magnitude, channel-level", gm_student, gm_info))

    rows = [teacher_row]
    for name, student, info in candidates:
        cost = measure_cost(student, (3, 32, 32))
        seconds = short_kd(student, teacher_logits, x_train)
        row = {
            "name": name,
            "macs": cost.macs,
            "params": cost.params,
            "budget_used": cost.macs / max_macs,
            "val": top1(student, x_test[:5000], y_test[:5000]),
            "test": top1(student, x_test[5000:], y_test[5000:]),
            "kd_seconds": round(seconds, 1),
            **{k: v for k, v in info.items() if k != "channels"},
        }
        rows.append(row)
        print(
            f"  {name:34s} {row['macs'] / 1e6:6.1f}M MACs ({100 * row['budget_used']:5.1f}% of budget) "
            f"{row['params'] / 1e3:6.1f}k params  test[:5000] {row['val']:.2f}%  test[5000:] {row['test']:.2f}%  ({seconds:.0f} s)",
            flush=True,
        )

    print(f"\n{args.teacher}, budget {args.budget} = {max_macs / 1e6:.1f}M MACs; same 300-step KD for every row")
    print(f"{'student':36s} {'MACs':>8s} {'% budget':>9s} {'params':>8s} {'test[:5000]':>12s} {'test[5000:]':>12s}")
    for r in rows:
        print(
            f"{r['name']:36s} {r['macs'] / 1e6:7.1f}M {100 * r['macs'] / max_macs:8.1f}% {r['params'] / 1e3:7.1f}k {r['val']:11.2f}% {r['test']:11.2f}%"
        )
    searched_row = rows[1]
    print("\ngain of the searched student on test[5000:]:")
    gains = {}
    for r in rows[2:]:
        gains[r["name"]] = round(searched_row["test"] - r["test"], 2)
        print(
            f"  vs {r['name']:34s} {gains[r['name']]:+.2f} points (it: {r['macs'] / 1e6:.1f}M, searched: {searched_row['macs'] / 1e6:.1f}M MACs)"
        )
    ref = REFERENCE.get(args.teacher)
    gm = next((r for r in rows if r["name"].startswith("global_magnitude")), None)
    checks = {
        "uses >= 90% of the budget": searched_row["budget_used"] >= 0.9,
        "beats the study's global magnitude by >= 1.0": gm is not None
        and searched_row["test"] - gm["test"] >= 1.0
        and gm["macs"] <= max_macs,
    }
    if ref is not None:
        checks[f"beats the issue's {ref}% by >= 1.0"] = searched_row["test"] - ref >= 1.0
    for what, ok in checks.items():
        print(f"  [{'x' if ok else ' '}] {what}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "teacher": args.teacher,
                    "budget": args.budget,
                    "max_macs": max_macs,
                    "trials": len(records),
                    "search_minutes": round(search_s / 60, 2),
                    "in_window": macs_in_window,
                    "rows": rows,
                    "gains": gains,
                    "checks": checks,
                    "reference": ref,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
