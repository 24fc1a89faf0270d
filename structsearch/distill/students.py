"""Default students for one-off proxy runs (``structsearch proxy`` without a spec, the benchmark)."""

from __future__ import annotations

from structsearch.errors import SpecError
from structsearch.space import ArchSpec, BlockSpec, Space


def uniform_width_spec(space: Space, width: float) -> ArchSpec:
    """Every block kept, every block's internal width at ``width`` (all heads kept).

    For the residual families this shrinks each block's MACs by about ``width`` while the stem,
    residual stream and classifier stay whole, so ``width = 0.5`` gives a student at roughly half
    the teacher's MACs that inherits weights from every layer.
    """
    for i, stage in enumerate(space.stages):
        for j, b in enumerate(stage):
            if not any(abs(width - w) < 1e-9 for w in b.widths):
                raise SpecError(
                    f"width {width} is not allowed for block {b.name} (stage {i}, block {j}); use one of {list(b.widths)}"
                )
    stages = tuple(
        tuple(BlockSpec(keep=True, width=width, heads=b.heads_base) for b in stage) for stage in space.stages
    )
    return ArchSpec(space.model, stages, space.model_kwargs)
