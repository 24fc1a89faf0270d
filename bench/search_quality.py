"""Benchmark: is the search worth it? (issue 4)

1. Sampler efficiency: the same spec searched with TPE and with random sampling for the same
   number of trials, in one run; prints the hypervolume of each front and their ratio.
2. Uniform width scaling: every block at the same width ratio, scored with the same proxy (same
   teacher outputs, steps, seed) as the search; prints each baseline point beside the best
   searched candidate at no more MACs.

    .venv/bin/python bench/search_quality.py                       # embedded default (digits)
    .venv/bin/python bench/search_quality.py studies/cifar10_resnet56.yaml --skip-samplers \
        --study cifar10-resnet56-50pct                             # baseline against a finished study

Studies go to a temporary SQLite file unless --storage is given (then existing studies are reused).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from structsearch.cost import format_count, measure_cost
from structsearch.search import default_spec, load_study_spec, pareto_front, run_search, study_records
from structsearch.search.context import build_context, plan_search
from structsearch.search.quality import hypervolume, uniform_width_specs
from structsearch.search.results import load_study
from structsearch.search.storage import open_storage
from structsearch.surgery import build_student


def sampler_efficiency(spec, storage: str, trials: int) -> None:
    print(f"== sampler efficiency: {trials} trials each, budget {spec.budget.flops or spec.budget.params}")
    hv = {}
    for sampler in ("tpe", "random"):
        t = time.perf_counter()
        s = run_search(
            spec.with_overrides(name=f"{spec.name}-{sampler}", sampler=sampler, trials=trials, warm_start=False),
            storage,
        )
        front = pareto_front(study_records(s))
        hv[sampler] = hypervolume(front, s.user_attrs["teacher_macs"], s.user_attrs["max_macs"])
        best = max((r.score for r in front), default=float("nan"))
        print(
            f"  {sampler:6s} hypervolume {hv[sampler]:8.3f}   front {len(front)} points, best {best:.2f}%   "
            f"({time.perf_counter() - t:.0f} s)"
        )
    if hv["random"] > 0:
        print(f"  TPE / random hypervolume ratio: {hv['tpe'] / hv['random']:.3f}")


def uniform_baseline(spec, storage: str, study_name: str) -> None:
    study = load_study(study_name, open_storage(storage, create=False))
    front = pareto_front(study_records(study))
    plan = plan_search(spec)
    ctx = build_context(plan)
    print(
        f"== uniform width scaling vs the front of '{study_name}' (teacher {ctx.teacher_score:.2f}%, "
        f"{format_count(plan.teacher_cost.macs)} MACs, budget {format_count(plan.max_macs or 0)})"
    )
    print(f"  {'ratio':>5s} {'MACs':>8s} {'uniform %':>9s} | {'searched %':>10s} {'MACs':>8s} trial  gain")
    for spec_u in uniform_width_specs(plan.space):
        student = build_student(ctx.base, spec_u)
        macs = measure_cost(student, plan.input_size).macs
        if plan.max_macs and macs > plan.max_macs:
            continue
        score = ctx.distiller.score(student).val_top1
        ratio = spec_u.stages[0][0].width
        rivals = [r for r in front if r.macs <= macs]
        if rivals:
            r = max(rivals, key=lambda r: r.score)
            print(
                f"  {ratio:5.3f} {format_count(macs):>8s} {score:9.2f} | {r.score:10.2f} {format_count(r.macs):>8s} {r.trial:5d} {r.score - score:+5.2f}"
            )
        else:
            print(f"  {ratio:5.3f} {format_count(macs):>8s} {score:9.2f} | {'(none at <= MACs)':>25s}")


def main() -> None:
    ap = argparse.ArgumentParser(description="search quality: TPE vs random hypervolume, uniform width baseline")
    ap.add_argument("spec", nargs="?", type=Path, help="study spec YAML (default: the embedded default)")
    ap.add_argument("--trials", type=int, default=None, help="trials per sampler (default: the spec's)")
    ap.add_argument("--storage", default=None, help="storage URL (default: a temporary SQLite file)")
    ap.add_argument(
        "--study", default=None, help="compare the uniform baseline against this study (default: the TPE run)"
    )
    ap.add_argument("--skip-samplers", action="store_true", help="only the uniform baseline")
    args = ap.parse_args()
    spec = load_study_spec(args.spec) if args.spec else default_spec()
    storage = args.storage or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    if not args.skip_samplers:
        sampler_efficiency(spec, storage, args.trials or spec.trials)
    uniform_baseline(spec, storage, args.study or f"{spec.name}-tpe")


if __name__ == "__main__":
    main()
