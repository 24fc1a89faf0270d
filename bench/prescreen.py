"""Benchmark: does the BatchNorm-recalibration pre-screen rank candidates like the KD proxy?

    .venv/bin/python bench/prescreen.py --home HOME --study NAME [--spec studies/cifar10_resnet56.yaml]
                                        [--candidates 200] [--json out.json]

Reads a finished study (e.g. the one ``bench/vs_pruning.py`` ran, in its ``--home``), gives every
trained, non-duplicate trial of it the pre-screen's quick score (top-1 on 512 validation images
after BatchNorm recalibration on 4 batches, no training) and prints Kendall's tau and Spearman's rho
between quick scores and the study's proxy scores, over all of them and over those within
[0.9, 1.0] x budget (where a pre-screen would choose). Then times a pre-screen of ``--candidates``
random shapes at the budget, in seconds per candidate next to the study's median trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--spec", default=str(ROOT / "studies" / "cifar10_resnet56.yaml"))
    ap.add_argument("--teacher-checkpoint", help="override the spec's teacher checkpoint (as the study did)")
    ap.add_argument("--teacher", help="override the spec's teacher model (as the study did)")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ["STRUCTSEARCH_HOME"] = args.home
    os.chdir(ROOT)

    from scipy.stats import kendalltau, spearmanr

    from structsearch.search.context import build_context, plan_search
    from structsearch.search.prescreen import prescreen
    from structsearch.search.results import load_study
    from structsearch.search.spec import load_study_spec
    from structsearch.search.storage import open_storage
    from structsearch.space import ArchSpec
    from structsearch.surgery import build_student, get_importance

    study = load_study(args.study, open_storage(create=False))
    spec = load_study_spec(args.spec).with_overrides(
        **{"teacher.model": args.teacher, "teacher.checkpoint": args.teacher_checkpoint}
    )
    plan = plan_search(spec)
    ctx = build_context(plan)
    importance = get_importance(spec.importance, spec.seed)
    max_macs = plan.max_macs
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if not a.get("trained") or a.get("score") is None or "duplicate_of" in a:
            continue
        student = build_student(ctx.base, ArchSpec.from_dict(a["spec"]), importance)
        start = time.perf_counter()
        quick = ctx.distiller.quick_score(student, input_size=a.get("resolution"))
        rows.append(
            {
                "trial": t.number,
                "macs": a["macs"],
                "proxy": a["score"],
                "quick": quick,
                "quick_seconds": time.perf_counter() - start,
                "proxy_seconds": a.get("proxy_seconds"),
            }
        )
    result: dict = {"study": args.study, "trials": len(rows)}
    for name, subset in (("all", rows), ("at budget", [r for r in rows if r["macs"] >= 0.9 * max_macs])):
        if len(subset) >= 3:
            tau, p = kendalltau([r["quick"] for r in subset], [r["proxy"] for r in subset])
            rho, _ = spearmanr([r["quick"] for r in subset], [r["proxy"] for r in subset])
            result[name] = {
                "n": len(subset),
                "tau": round(float(tau), 3),
                "p": round(float(p), 4),
                "spearman": round(float(rho), 3),
            }
            print(f"{name:10s} n={len(subset):3d}  Kendall tau {tau:.3f} (p={p:.3g})  Spearman {rho:.3f}")
    for r in sorted(rows, key=lambda r: -r["proxy"]):
        print(f"  trial {r['trial']:3d}  {r['macs'] / 1e6:6.1f}M  proxy {r['proxy']:6.2f}  quick {r['quick']:6.2f}")
    start = time.perf_counter()
    ranked = prescreen(ctx, args.candidates, seed=123)
    seconds = time.perf_counter() - start
    median_trial = statistics.median(r["proxy_seconds"] for r in rows if r["proxy_seconds"])
    result |= {
        "candidates": len(ranked),
        "prescreen_seconds": round(seconds, 1),
        "per_candidate_s": round(seconds / max(1, len(ranked)), 3),
        "median_proxy_s": median_trial,
        "top_quick": [s for s, _ in ranked[:10]],
    }
    print(
        f"pre-screen of {len(ranked)} distinct candidates: {seconds:.0f} s ({seconds / max(1, len(ranked)):.2f} s each) "
        f"vs a median proxy trial of {median_trial:.1f} s; best quick scores {[s for s, _ in ranked[:5]]}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result | {"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
