"""Budget-filling proposals: a few shape knobs per stage, realised as a structure at the budget.

Why not one ``keep`` and one ``width`` categorical per block: ResNet-56 would have 54 of them, and a
sampler's early proposals (about half the blocks kept, at about 60% width) all land near a third
of the teacher's MACs whatever the budget, so the budget a user granted is never tried.

Here the sampler chooses the *shape* of a student, a handful of floats per stage:

* ``s{i}.depth`` in [0, 1] -- the fraction of the stage's removable blocks kept (evenly spaced
  through the stage, as layer-dropping recipes such as DistilBERT's keep every other layer);
* ``s{i}.width`` in [0, 1] -- the stage's width relative to the others (0: narrowest ratio);
* ``s{i}.taper`` in [-1, 1] -- how width changes along the stage (negative: wider first blocks);
* ``s{i}.heads`` in [0, 1] -- attention heads, like ``width`` (ViT stages only);
and, in multi-objective studies only, each trial has a ``target``: the fraction of the budget it
fills. It is not the sampler's choice (a sampler minimising MACs as an objective would drive it
down and leave the budget unused): even-numbered trials aim at the budget itself, where the best
answer lies, and odd-numbered ones at fractions spread evenly over ``[t_min, 1)`` (a van der
Corput sequence), so the front spans the whole range and its upper end reaches the budget. The
target is stored on the trial (user attribute ``target``) and kept when a failed trial is retried.

and :meth:`ProposalSpace.realise` turns that shape into the structure that fills the budget: one
width scale for all blocks is bisected against a calibrated cost model
(:mod:`structsearch.search.costmodel`), blocks are added or dropped when no scale can fit, and the
rounding to the width grid is made up by widening the blocks it cut most, one notch at a time,
until nothing more fits. The result lands in ``[fill * budget, budget]`` (``budget.fill``, default
0.9) unless the space cannot get there (a budget above the teacher, or below what the stage
structure allows). The realisation is a deterministic function of the trial's parameters and the
measured cost, so the structure that is trained is always the realisation of ``trial.params`` (at
the trial's ``target``) -- the sampler learns the score of exactly the structure it proposed,
expressed in shape coordinates.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from structsearch.search.costmodel import CostModel
from structsearch.space import ArchSpec, BlockChoices, BlockSpec, Space

if TYPE_CHECKING:  # pragma: no cover
    import optuna

#: A measured ``(macs, params)`` of a spec (the objective passes fvcore's count of the built student).
Measure = Callable[[ArchSpec], tuple[int, int]]

#: Rounds of "measure, then re-aim by the model's error" when the model is not exact for a family.
_CORRECTIONS = 3


@dataclass(frozen=True)
class Caps:
    """The limits one proposal must respect: the budgets (already scaled by ``target``) and the fill."""

    max_macs: int | None
    max_params: int | None
    fill: float

    @property
    def primary(self) -> str | None:
        """The budget the proposal fills: MACs when there is a MACs budget, else params."""
        return "macs" if self.max_macs is not None else "params" if self.max_params is not None else None

    def fits(self, macs: float, params: float) -> bool:
        return (self.max_macs is None or macs <= self.max_macs) and (
            self.max_params is None or params <= self.max_params
        )

    def filled(self, macs: float, params: float) -> bool:
        if self.max_macs is not None:  # the primary budget, as in :attr:`primary`
            return macs >= self.fill * self.max_macs
        if self.max_params is not None:
            return params >= self.fill * self.max_params
        return True

    def shifted(self, macs_error: float, params_error: float) -> Caps:
        """The caps the *model* must aim at when it over-predicts by ``(macs_error, params_error)``."""
        return Caps(
            None if self.max_macs is None else int(self.max_macs + macs_error),
            None if self.max_params is None else int(self.max_params + params_error),
            self.fill,
        )


class ProposalSpace:
    """The budget-filling parametrisation of one :class:`Space` (see the module docstring)."""

    def __init__(
        self,
        space: Space,
        model: CostModel,
        max_macs: int | None,
        max_params: int | None,
        fill: float = 0.9,
        *,
        vary_target: bool = False,
        min_target: float = 0.0,
    ) -> None:
        self.space = space
        self.model = model
        self.max_macs = max_macs
        self.max_params = max_params
        self.fill = fill
        #: Multi-objective: odd trials aim below the budget (see :meth:`target_for`) so the front spans it.
        self.vary_target = vary_target and (max_macs is not None or max_params is not None)
        self.min_target = min(max(min_target, 0.0), 1.0)

    # -- parameters ----------------------------------------------------------------------------
    def param_ranges(self) -> dict[str, tuple[float, float]]:
        """Name -> (low, high) of every float this space asks a trial for, in asking order."""
        ranges: dict[str, tuple[float, float]] = {}
        for i, stage in enumerate(self.space.stages):
            if any(c.removable for c in stage):
                ranges[f"s{i}.depth"] = (0.0, 1.0)
            if any(len(c.widths) > 1 for c in stage):
                ranges[f"s{i}.width"] = (0.0, 1.0)
                if sum(len(c.widths) > 1 for c in stage) > 1:
                    ranges[f"s{i}.taper"] = (-1.0, 1.0)
            if any(c.heads and len(c.heads) > 1 for c in stage):
                ranges[f"s{i}.heads"] = (0.0, 1.0)
        return ranges

    def largest(self) -> dict[str, float]:
        """Parameters of the even shape: every block kept, equal widths, no taper, all heads.

        Realised, this is uniform width scaling to the budget (the ``uniform`` baseline).
        """
        return {name: (0.0 if name.endswith(".taper") else high) for name, (_, high) in self.param_ranges().items()}

    def suggest_params(self, trial: optuna.Trial) -> dict[str, float]:
        return {name: trial.suggest_float(name, low, high) for name, (low, high) in self.param_ranges().items()}

    def target_for(self, number: int) -> float:
        """The fraction of the budget trial ``number`` fills: 1 for even numbers (and single-objective
        studies), else the van der Corput point of ``number // 2`` mapped onto ``[min_target, 1)``."""
        if not self.vary_target or number % 2 == 0:
            return 1.0
        k, point, base = number // 2 + 1, 0.0, 0.5
        while k:
            point += base * (k & 1)
            k >>= 1
            base /= 2
        return self.min_target + (1.0 - self.min_target) * point

    def caps(self, target: float = 1.0) -> Caps:
        """The budgets one proposal fills: the study's, times its ``target`` (at most 1)."""
        target = min(1.0, target)

        def scaled(budget: int | None) -> int | None:
            return None if budget is None else int(budget * target)

        return Caps(scaled(self.max_macs), scaled(self.max_params), self.fill)

    # -- realisation ---------------------------------------------------------------------------
    def propose(self, params: Mapping[str, float], measure: Measure | None = None, target: float = 1.0) -> ArchSpec:
        """The structure for ``params`` at ``target``: realised against the model, checked with ``measure``.

        Where the model is exact (checked per family by the tests) one measurement confirms it.
        Otherwise the caps are shifted by the model's error on this proposal and it is realised
        again, up to a few rounds; the last proposal that fits is returned.
        """
        caps = self.caps(target)
        spec = self.realise(params, caps)
        if measure is None or caps.primary is None:
            return spec
        best = None
        for _ in range(_CORRECTIONS):
            macs, params_count = measure(spec)
            if caps.fits(macs, params_count):
                best = spec
                if caps.filled(macs, params_count):
                    return spec
            error = (self.model.macs(spec) - macs, self.model.params(spec) - params_count)
            if error == (0, 0):
                break
            aim = caps.shifted(*error)
            nxt = self.realise(params, aim)
            if nxt == spec:
                break
            spec = nxt
        return best if best is not None else self.realise(params, caps)

    def realise(self, params: Mapping[str, float], caps: Caps) -> ArchSpec:
        """Deterministic: the shape in ``params`` scaled (and deepened or shortened) to fill ``caps``."""
        shape = Shape.of(self.space, params)
        if caps.primary is None:
            return shape.spec(1.0)

        def fits(spec: ArchSpec) -> bool:
            return caps.fits(self.model.macs(spec), self.model.params(spec))

        def filled(spec: ArchSpec) -> bool:
            return caps.filled(self.model.macs(spec), self.model.params(spec))

        # depth first: shorten until the narrowest version fits, deepen while the widest is short
        while not fits(shape.spec(0.0)) and shape.drop_one():
            pass
        while fits(shape.spec(shape.saturation)) and not filled(shape.spec(shape.saturation)) and shape.add_one():
            pass
        if not fits(shape.spec(0.0)):  # the last block added does not fit even at the narrowest
            shape.drop_one()
        if fits(shape.spec(shape.saturation)):
            return shape.spec(shape.saturation)
        lo, hi = 0.0, shape.saturation  # fits(lo), not fits(hi)
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(shape.spec(mid)) else (lo, mid)
        return fill_greedily(shape.spec(lo), shape, lo, fits)


@dataclass
class Shape:
    """The sampler's shape of a student, before it is scaled to the budget."""

    space: Space
    keep: list[list[bool]]
    #: Desired width ratio and heads fraction per block at scale 1.
    ratio: list[list[float]]
    heads: list[list[float]]

    @classmethod
    def of(cls, space: Space, params: Mapping[str, float]) -> Shape:
        keep, ratio, heads = [], [], []
        for i, stage in enumerate(space.stages):
            removable = [j for j, c in enumerate(stage) if c.removable]
            k = round(float(params.get(f"s{i}.depth", 1.0)) * len(removable))
            if len(removable) == len(stage):
                k = max(k, 1)  # a stage keeps at least one block
            kept = set(evenly(removable, k))
            keep.append([not c.removable or j in kept for j, c in enumerate(stage)])
            w = float(params.get(f"s{i}.width", 1.0))
            taper = float(params.get(f"s{i}.taper", 0.0))
            h = float(params.get(f"s{i}.heads", 1.0))
            n = len(stage)
            row_r, row_h = [], []
            for j, c in enumerate(stage):
                lo = min(c.widths)
                pos = j / (n - 1) - 0.5 if n > 1 else 0.0
                row_r.append(min(1.0, max(lo, (lo + (1 - lo) * w) * (1 + taper * pos))))
                if c.heads and c.heads_base:
                    hmin = min(c.heads) / c.heads_base
                    row_h.append(hmin + (1 - hmin) * h)
                else:
                    row_h.append(1.0)
            ratio.append(row_r)
            heads.append(row_h)
        return cls(space, keep, ratio, heads)

    @property
    def saturation(self) -> float:
        """The scale at which every block reaches full width and all heads."""
        smallest = min(min(min(r), min(h)) for r, h in zip(self.ratio, self.heads))
        return 1.0 / smallest

    def spec(self, scale: float) -> ArchSpec:
        stages = []
        for i, stage in enumerate(self.space.stages):
            stages.append(
                tuple(
                    BlockSpec(
                        keep=self.keep[i][j],
                        width=_snap(c.widths, scale * self.ratio[i][j]),
                        heads=_snap_heads(c, scale * self.heads[i][j]),
                    )
                    for j, c in enumerate(stage)
                )
            )
        return ArchSpec(self.space.model, tuple(stages), self.space.model_kwargs)

    def add_one(self) -> bool:
        """Keep one more block, in the stage with the lowest kept fraction; False when all are kept."""
        return self._change(add=True)

    def drop_one(self) -> bool:
        """Drop one more block, in the stage with the highest kept fraction; False when none can go."""
        return self._change(add=False)

    def _change(self, *, add: bool) -> bool:
        options = []
        for i, stage in enumerate(self.space.stages):
            removable = [j for j, c in enumerate(stage) if c.removable]
            kept = sum(self.keep[i][j] for j in removable)
            can = kept < len(removable) if add else kept > (0 if len(removable) < len(stage) else 1)
            if removable and can:
                options.append((kept / len(removable), i, removable, kept))
        if not options:
            return False
        _, i, removable, kept = min(options) if add else max(options, key=lambda o: (o[0], -o[1]))
        chosen = set(evenly(removable, kept + (1 if add else -1)))
        for j in removable:
            self.keep[i][j] = j in chosen
        return True


def evenly(items: list[int], k: int) -> list[int]:
    """``k`` of ``items`` spread evenly (the middle of each of ``k`` equal segments)."""
    if k <= 0:
        return []
    n = len(items)
    return [items[min(n - 1, int((t + 0.5) * n / k))] for t in range(k)]


def _snap(widths: tuple[float, ...], value: float) -> float:
    """The largest allowed width ratio (or head count) not above ``value`` (the smallest when all are above)."""
    ordered = sorted(widths)
    k = bisect.bisect_right(ordered, value + 1e-9)
    return ordered[max(0, k - 1)]


def _snap_heads(c: BlockChoices, fraction: float) -> int | None:
    if not c.heads or not c.heads_base:
        return c.heads_base if c.heads else None
    return int(_snap(c.heads, fraction * c.heads_base))


def fill_greedily(spec: ArchSpec, shape: Shape, scale: float, fits: Callable[[ArchSpec], bool]) -> ArchSpec:
    """Widen blocks one notch (or one head) at a time while the spec fits, most cut by rounding first.

    Then keep dropped blocks at the narrowest width where they still fit. What is left unused is
    less than the cheapest single step.
    """
    while True:
        moves = []
        for i, j, b in spec.blocks():
            c = shape.space.stages[i][j]
            if not b.keep:
                continue
            wider = [w for w in sorted(c.widths) if w > b.width + 1e-9]
            if wider:
                moves.append((scale * shape.ratio[i][j] - b.width, i, j, BlockSpec(True, wider[0], b.heads)))
            if c.heads and b.heads is not None:
                more = [h for h in sorted(c.heads) if h > b.heads]
                if more:
                    deficit = (scale * shape.heads[i][j] * (c.heads_base or 1) - b.heads) / (c.heads_base or 1)
                    moves.append((deficit, i, j, BlockSpec(True, b.width, more[0])))
        for i, j, b in spec.blocks():
            c = shape.space.stages[i][j]
            if not b.keep:
                moves.append((-2.0, i, j, BlockSpec(True, min(c.widths), min(c.heads) if c.heads else None)))
        moves.sort(key=lambda m: (-m[0], m[1], m[2]))
        for _, i, j, block in moves:
            candidate = spec.replace_block(i, j, block)
            if fits(candidate):
                spec = candidate
                break
        else:
            return spec
