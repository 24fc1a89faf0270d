"""A cheap pre-screen before the KD proxy: many candidates ranked without training, few trained.

An inherited student is already a good predictor of itself: its top-1 right after BatchNorm
recalibration on a few batches (EagleEye, Li et al. ECCV 2020; :meth:`Distiller.quick_score`)
costs a second or so, against tens of seconds for the proxy. With ``prescreen.candidates`` set, a
study's first search run draws that many random shapes from the proposal space, realises each at
the budget, scores it this way, and enqueues the best ``keep`` fraction as ordinary trials (with
their shape parameters, so the sampler learns from them like from its own proposals). The ranking
is stored on each trial (``prescreen_score``) and the run's summary on the study (``prescreen``).
"""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING, Any

import optuna

from structsearch.search.objective import Students
from structsearch.search.record import TrialAttrs
from structsearch.space import ArchSpec
from structsearch.surgery import get_importance

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.search.context import SearchContext

#: Study user attribute holding the pre-screen's summary (also the "already done" marker).
PRESCREEN_ATTR = "prescreen"


def run_prescreen(study: optuna.Study, ctx: SearchContext) -> dict[str, Any] | None:
    """Pre-screen once per study (no-op when off or done); returns the stored summary."""
    p = ctx.plan.spec.prescreen
    if p.candidates == 0 or PRESCREEN_ATTR in study.user_attrs:
        return study.user_attrs.get(PRESCREEN_ATTR)
    study.set_user_attr(PRESCREEN_ATTR, {"status": "running"})  # concurrent workers skip it
    start = time.perf_counter()
    ranked = prescreen(ctx, p.candidates, ctx.plan.spec.seed, batches=p.batches, images=p.images)
    kept = ranked[: max(1, math.ceil(p.keep * len(ranked)))]
    for score, params in kept:
        study.enqueue_trial(params, user_attrs=TrialAttrs(prescreen_score=score, target=1.0).attrs())  # at the budget
    summary = {
        "status": "done",
        "candidates": len(ranked),
        "kept": len(kept),
        "seconds": round(time.perf_counter() - start, 2),
        "best": kept[0][0] if kept else None,
        "cutoff": kept[-1][0] if kept else None,
    }
    study.set_user_attr(PRESCREEN_ATTR, summary)
    return summary


def prescreen(
    ctx: SearchContext, candidates: int, seed: int, *, batches: int = 4, images: int = 512
) -> list[tuple[float, dict[str, Any]]]:
    """``(quick score, params)`` of up to ``candidates`` distinct random shapes at the budget, best first.

    Shapes aim at the budget itself (their trials are enqueued with ``target`` 1); with a resolution
    dimension each candidate draws its resolution too.
    """
    plan = ctx.plan
    rng = random.Random(seed)
    importance = get_importance(plan.spec.importance, plan.spec.seed)
    seen: set[tuple[ArchSpec, int | None]] = set()
    out: list[tuple[float, dict[str, Any]]] = []
    for _ in range(candidates):
        resolution = rng.choice(plan.resolutions) if plan.resolutions else None
        proposals = plan.proposals(resolution)
        params: dict[str, Any] = {
            name: rng.uniform(low, high) for name, (low, high) in proposals.param_ranges().items()
        }
        students = Students(ctx.base, importance, plan.student_input_size(resolution))
        spec = proposals.propose(params, students.measure)
        if (spec, resolution) in seen:
            continue
        seen.add((spec, resolution))
        student = students.get(spec)[0]
        if resolution is not None:
            params["resolution"] = resolution
        score = ctx.distiller.quick_score(student, batches=batches, images=images, input_size=resolution)
        out.append((round(score, 3), params))
    out.sort(key=lambda item: -item[0])
    return out
