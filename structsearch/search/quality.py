"""How good is a search? Hypervolume of a front, and the uniform-width-scaling baseline.

* :func:`hypervolume` -- the area a front dominates in (error, MACs / teacher MACs) up to the
  reference point (100% error, the budget): one number to compare samplers after equal trials.
* :func:`uniform_width_specs` -- the obvious baseline a search must beat: every block kept and
  reduced by the same ratio (as in "width multiplier" scaling), scored with the same proxy.
"""

from __future__ import annotations

import numpy as np
from optuna._hypervolume import compute_hypervolume

from structsearch.search.results import ScoredRecord
from structsearch.space import ArchSpec, BlockSpec, Space


def hypervolume(front: list[ScoredRecord], teacher_macs: int, max_macs: int | None = None) -> float:
    """Hypervolume of ``front`` in (error %, MACs / teacher MACs); reference (100, budget ratio)."""
    ref_x = (max_macs or teacher_macs) / teacher_macs
    pts = [(100.0 - r.score, r.macs / teacher_macs) for r in front if r.macs / teacher_macs <= ref_x]
    if not pts:
        return 0.0
    return float(compute_hypervolume(np.asarray(pts, dtype=float), np.asarray([100.0, ref_x])))


def uniform_width_specs(space: Space) -> list[ArchSpec]:
    """One spec per width ratio common to all blocks: all blocks kept, all widths (and heads) scaled."""
    common = set.intersection(*(set(c.widths) for stage in space.stages for c in stage))
    specs = []
    for ratio in sorted(common):
        stages = []
        for stage in space.stages:
            blocks = []
            for c in stage:
                heads = None
                if c.heads and c.heads_base is not None:
                    base = c.heads_base
                    heads = min(c.heads, key=lambda h: abs(h - base * ratio))
                blocks.append(BlockSpec(keep=True, width=ratio, heads=heads))
            stages.append(tuple(blocks))
        specs.append(ArchSpec(space.model, tuple(stages), space.model_kwargs))
    return specs
