"""The structures a search must beat, scored inside every study as its first trials.

A searched student is worth something only where it beats what a user would do without a search,
at equal MACs and equal training. Three such answers, each filling the same budget as the search:

* ``uniform`` -- width-multiplier scaling: every block kept, all at the same width ratio, widened
  one notch at a time (evenly) until the budget is full. It is the even shape of the proposal space
  (:meth:`ProposalSpace.largest`), so it is enqueued as ordinary parameters the sampler learns from.
* ``global_magnitude`` -- one-shot structured pruning (Li et al. 2017; Torch-Pruning's global
  ranking): every internal channel of every block is scored by the L2 norm of its group (the
  weights it writes and reads), normalised by its block's mean score, and the lowest-scoring
  channels across *all* blocks are removed until the budget is met; the kept counts are then put
  on the width grid (rounded down, then widened by what rounding cut most while the budget allows).
* ``depth`` -- stage-uniform block dropping: the same fraction of every stage's removable blocks
  kept (evenly spaced), at full width, as many as fit.

Every new study enqueues them (user attribute ``baseline`` names which). ``global_magnitude`` and
``depth`` are fixed structures, not points of the proposal space: their trials have no shape
parameters and their structure is worked out from the teacher's weights when the trial runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from structsearch.pruning.importance import Importance, TensorDim, unit_sums
from structsearch.search.costmodel import CostModel
from structsearch.search.proposal import Caps, ProposalSpace, Shape, evenly, fill_greedily
from structsearch.space import ArchSpec, BlockSpec, Space
from structsearch.surgery import build_student_with_recipe

#: Baselines with a structure of their own rather than shape parameters.
FIXED_BASELINES = ("global_magnitude", "depth")


class L2GroupMagnitude(Importance):
    """L2 norm of each unit's weights over all tensors of its group (Torch-Pruning's group L2)."""

    name = "l2"

    def scores(self, tensors: Sequence[TensorDim]) -> Tensor:
        return unit_sums(tensors, lambda t: t.pow(2)).sqrt()


class _Recorder(Importance):
    """Wraps an importance and keeps every score vector it computes (to read a block's channel scores)."""

    def __init__(self, inner: Importance) -> None:
        self.inner, self.name = inner, inner.name
        self.calls: list[Tensor] = []

    def scores(self, tensors: Sequence[TensorDim]) -> Tensor:
        s = self.inner.scores(tensors)
        self.calls.append(s)
        return s


def enqueued_params(names: Sequence[str], proposals: ProposalSpace) -> list[tuple[str, dict[str, float]]]:
    """``(name, parameters)`` of the baselines a new study enqueues as its first trials.

    ``uniform`` carries the even shape's parameters; the fixed baselines carry none (their
    structure depends on the teacher's weights, which :func:`baseline_spec` reads when the trial
    runs). A baseline the study cannot express is left out: without a budget there is nothing to
    fill, without width or head choices nothing to rank, without removable blocks no depth.
    """
    caps = proposals.caps()
    space = proposals.space
    out: list[tuple[str, dict[str, float]]] = []
    for name in names:
        if name == "uniform":
            out.append((name, proposals.largest()))
        elif caps.primary is None:
            continue
        elif name == "global_magnitude" and any(
            len(c.widths) > 1 or (c.heads and len(c.heads) > 1) for s in space.stages for c in s
        ):
            out.append((name, {}))
        elif name == "depth" and depth_spec(space, proposals.model, caps) is not None:
            out.append((name, {}))
    return out


def baseline_spec(name: str, base: nn.Module, proposals: ProposalSpace) -> ArchSpec | None:
    """The fixed structure of baseline ``name`` for the teacher ``base`` (with its trained weights)."""
    caps = proposals.caps()
    if name == "global_magnitude":
        return global_magnitude_spec(base, proposals.space, proposals.model, caps)
    if name == "depth":
        return depth_spec(proposals.space, proposals.model, caps)
    return None


#: A prunable unit group: ``(stage, block, "width" | "heads")``.
Unit = tuple[int, int, str]


def unit_scores(base: nn.Module, space: Space, importance: Importance | None = None) -> dict[Unit, Tensor]:
    """Scores of every block's inner channels and heads, normalised by the block's mean (group L2).

    Read by narrowing one block at a time through its family's own surgery with a recording
    importance, so the groups are exactly those the surgery ranks; a block with two channel groups
    (a bottleneck's two inner widths) gets their mean. A block whose surgery keeps whole groups of
    channels (``BlockChoices.unit``) gets one score per group.
    """
    out: dict[Unit, Tensor] = {}
    full = space.full_spec()
    for i, stage in enumerate(space.stages):
        for j, c in enumerate(stage):
            searchable_heads = c.heads is not None and len(c.heads) > 1
            if len(c.widths) < 2 and not searchable_heads:
                continue
            recorder = _Recorder(importance or L2GroupMagnitude())
            narrowest = BlockSpec(True, min(c.widths), min(c.heads) if c.heads else None)
            build_student_with_recipe(base, full.replace_block(i, j, narrowest), recorder)
            for kind, size in (
                ("width", c.width_base // c.unit if len(c.widths) > 1 else 0),
                ("heads", c.heads_base if searchable_heads else 0),
            ):
                vectors = [v / v.mean().clamp_min(1e-12) for v in recorder.calls if size and v.numel() == size]
                if vectors:
                    out[(i, j, kind)] = torch.stack(vectors).mean(0)
    return out


def global_units(base: nn.Module, space: Space, model: CostModel, caps: Caps) -> dict[Unit, int]:
    """Channels and heads kept per block by global magnitude pruning to ``caps``, one unit at a time.

    Lowest normalised scores go first, across all blocks, never below a block's narrowest allowed
    width or fewest heads; the exact counts (not yet on the width grid) are what a structured
    pruner keeps. A unit is a channel, a head, or a grouped convolution's group of channels.
    """
    scores = unit_scores(base, space)
    kept: dict[Unit, int] = {}
    floor: dict[Unit, int] = {}
    for i, stage in enumerate(space.stages):
        for j, c in enumerate(stage):
            kept[(i, j, "width")], floor[(i, j, "width")] = c.width_base, c.channels(min(c.widths))
            kept[(i, j, "heads")] = c.heads_base or 0
            floor[(i, j, "heads")] = min(c.heads) if c.heads else 0
    units = sorted((float(v), u) for u, s in scores.items() for v in s)
    # running estimates, updated by each block's fitted (fractional) cost
    macs: float = model.macs(space.full_spec())
    params: float = model.params(space.full_spec())
    for _, (i, j, kind) in units:
        if caps.fits(macs, params):
            break
        if kept[(i, j, kind)] <= floor[(i, j, kind)]:
            continue
        before = (kept[(i, j, "width")], kept[(i, j, "heads")])
        kept[(i, j, kind)] -= space.stages[i][j].unit if kind == "width" else 1
        after = (kept[(i, j, "width")], kept[(i, j, "heads")])
        macs -= model.block_macs[i][j].at(*before) - model.block_macs[i][j].at(*after)
        params -= model.block_params[i][j].at(*before) - model.block_params[i][j].at(*after)
    return kept


def global_magnitude_spec(base: nn.Module, space: Space, model: CostModel, caps: Caps) -> ArchSpec | None:
    """:func:`global_units` put on the width grid and filled to the budget (None: nothing to rank)."""
    kept = global_units(base, space, model, caps)
    ratio = [
        [kept[(i, j, "width")] / c.width_base for j, c in enumerate(stage)] for i, stage in enumerate(space.stages)
    ]
    heads = [
        [kept[(i, j, "heads")] / c.heads_base if c.heads_base else 1.0 for j, c in enumerate(stage)]
        for i, stage in enumerate(space.stages)
    ]
    shape = Shape(space, [[True] * len(s) for s in space.stages], ratio, heads)
    spec = _fill_within(shape, model, caps)
    return spec if spec != space.full_spec() and caps.fits(model.macs(spec), model.params(spec)) else None


def depth_spec(space: Space, model: CostModel, caps: Caps) -> ArchSpec | None:
    """The most blocks that fit at full width with the same kept fraction in every stage (None: none fit)."""
    removable = [[j for j, c in enumerate(stage) if c.removable] for stage in space.stages]
    if not any(removable):
        return None
    steps = max(len(r) for r in removable)
    for k in range(steps, -1, -1):
        fraction = k / steps
        stages = []
        for stage, rem in zip(space.stages, removable):
            n = round(fraction * len(rem))
            if len(rem) == len(stage):
                n = max(n, 1)
            kept = set(evenly(rem, n))
            stages.append(
                tuple(BlockSpec(not c.removable or j in kept, 1.0, c.heads_base) for j, c in enumerate(stage))
            )
        spec = ArchSpec(space.model, tuple(stages), space.model_kwargs)
        if caps.fits(model.macs(spec), model.params(spec)):
            return spec if k < steps else None  # keeping every block is no depth baseline
    return None


def _fill_within(shape: Shape, model: CostModel, caps: Caps) -> ArchSpec:
    def fits(spec: ArchSpec) -> bool:
        return caps.fits(model.macs(spec), model.params(spec))

    return fill_greedily(shape.spec(1.0), shape, 1.0, fits)
