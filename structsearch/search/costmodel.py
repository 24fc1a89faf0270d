"""A calibrated block-additive model of a space's MACs and params, for steering proposals.

Filling a budget means trying many structures: bisecting a width scale, widening one block at a
time. Building each one and counting it with fvcore would cost 0.1-0.6 s per try, so proposals use
this model instead and the objective still *measures* the chosen structure (stored figures are
always fvcore's).

The model rests on one property of every block-wise family here: a block's own cost depends only
on its own choices, and is a quadratic in the channels and linear in the heads it keeps, because the block's input
and output widths (the residual stream) never change::

    cost(spec) = outside + sum over kept blocks j of (a_j + b_j * ch_j + e_j * ch_j**2 + d_j * heads_j)

It is calibrated from four students with every block kept (see :func:`_calibration_specs`), read
per block from fvcore's per-module breakdown. A layer outside a block whose width that block sets
(a MobileNet's stem narrowed with its first depthwise-separable block, the conv before a narrowed
``ConvBnAct``) is counted with that block (:meth:`~structsearch.space.base.Family.cost_owners`), so
the model is exact for every registered family's test case (checked against fvcore by the tests).
Where one layer's input and output are set by two different blocks (MobileNetV1's chain of
depthwise-separable blocks) its cost is bilinear in their widths and the model is approximate:
:meth:`ProposalSpace.propose` corrects against the measured count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from torch import nn

from structsearch.cost.counter import _normalize_input_size, _run_analysis, count_params
from structsearch.space import ArchSpec, BlockChoices, BlockSpec, Space, get_family
from structsearch.surgery import build_student


@dataclass(frozen=True)
class _BlockCost:
    """``a + b * channels + e * channels**2 + d * heads``: one block's cost when kept.

    Quadratic in channels because a ResNet bottleneck narrows two widths by the same ratio and its
    middle convolution scales with both; linear in heads (each head has its own projections).
    """

    a: float
    b: float
    e: float
    d: float

    def at(self, channels: int, heads: int) -> float:
        return self.a + self.b * channels + self.e * channels * channels + self.d * heads


def _fit(points: list[tuple[int, int, float]]) -> _BlockCost:
    """Solve one block's four calibration points ``(channels, heads, cost)`` for its coefficients.

    The points are: full width with all heads, narrowest width with fewest heads, narrowest width
    with all heads, and a middle width with fewest heads (see :func:`_calibration_specs`).
    """
    (c_full, h_full, y_full), (c_min, h_min, y_min), (_, _, y_min_hfull), (c_mid, _, y_mid) = points
    d = (y_min_hfull - y_min) / (h_full - h_min) if h_full != h_min else 0.0
    # the channel part through (c_min, y_min), (c_mid, y_mid), (c_full, y_full - d * (h_full - h_min))
    xs = sorted({(c_min, y_min), (c_mid, y_mid), (c_full, y_full - d * (h_full - h_min))})
    xs = list({x: y for x, y in xs}.items())
    if len(xs) == 1:  # a fixed width; a cost that still varies comes from narrowed neighbours: take it at full
        return _BlockCost(y_full - d * h_full, 0.0, 0.0, d)
    elif len(xs) == 2:
        (x0, y0), (x1, y1) = xs
        b, e = (y1 - y0) / (x1 - x0), 0.0
    else:
        (x0, y0), (x1, y1), (x2, y2) = xs
        s01, s12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        e = (s12 - s01) / (x2 - x0)
        b = s01 - e * (x0 + x1)
    a = y_min - b * c_min - e * c_min * c_min - d * h_min
    return _BlockCost(a, b, e, d)


@dataclass(frozen=True)
class CostModel:
    """Predicted MACs (at one input size) and params of any spec of one space."""

    space: Space
    input_size: tuple[int, int, int]
    macs_outside: float
    params_outside: float
    block_macs: tuple[tuple[_BlockCost, ...], ...]
    block_params: tuple[tuple[_BlockCost, ...], ...]

    @classmethod
    def calibrate(cls, base: nn.Module, space: Space, input_size: int | tuple[int, int, int]) -> CostModel:
        """Four builds and fvcore traces of ``base``'s students (about 0.2 s for ResNet-56)."""
        size = _normalize_input_size(input_size)
        specs = _calibration_specs(space)
        readings = []
        for spec in specs:
            student = base if spec == specs[0] else build_student(base, spec)
            readings.append((student, _run_analysis(student, size).by_module()))
        owners = get_family(space.family).cost_owners(base)
        macs_rows, params_rows = [], []
        inside_macs = inside_params = 0.0
        for i, stage in enumerate(space.stages):
            m_row, p_row = [], []
            for j, c in enumerate(stage):
                shape = [(c.channels(s.stages[i][j].width), s.stages[i][j].heads or 0) for s in specs]
                macs = [_block_count(partial(_macs_at, by_module), c.name, owners) for _, by_module in readings]
                params = [_block_count(partial(_params_at, student), c.name, owners) for student, _ in readings]
                m_row.append(_fit([(ch, h, y) for (ch, h), y in zip(shape, macs)]))
                p_row.append(_fit([(ch, h, y) for (ch, h), y in zip(shape, params)]))
                inside_macs += macs[0]
                inside_params += params[0]
            macs_rows.append(tuple(m_row))
            params_rows.append(tuple(p_row))
        full_model, full_macs = readings[0]
        return cls(
            space=space,
            input_size=size,
            macs_outside=float(full_macs[""]) - inside_macs,
            params_outside=float(count_params(full_model)) - inside_params,
            block_macs=tuple(macs_rows),
            block_params=tuple(params_rows),
        )

    def macs(self, spec: ArchSpec) -> int:
        return round(self.macs_outside + self._blocks(spec, self.block_macs))

    def params(self, spec: ArchSpec) -> int:
        return round(self.params_outside + self._blocks(spec, self.block_params))

    def _blocks(self, spec: ArchSpec, rows: tuple[tuple[_BlockCost, ...], ...]) -> float:
        total = 0.0
        for i, j, b in spec.blocks():
            if b.keep:
                c = self.space.stages[i][j]
                total += rows[i][j].at(c.channels(b.width), b.heads or 0)
        return total


def _macs_at(by_module: Mapping[str, int], path: str) -> float:
    return float(by_module.get(path, 0))


def _params_at(model: nn.Module, path: str) -> float:
    return float(count_params(model.get_submodule(path)))


def _block_count(count: Callable[[str], float], name: str, owners: dict[str, str]) -> float:
    """``count`` (MACs or params by module path) of block ``name``, with the layers outside it that its
    width sets and without its layers that another block's width sets (``Family.cost_owners``)."""
    gained = sum(count(m) for m, owner in owners.items() if owner == name)
    lost = sum(count(m) for m, owner in owners.items() if m.startswith(name + ".") and owner != name)
    return count(name) + gained - lost


def _calibration_specs(space: Space) -> tuple[ArchSpec, ArchSpec, ArchSpec, ArchSpec]:
    """Every block kept: full; narrowest + fewest heads; narrowest + all heads; middle width + fewest heads."""

    def all_kept(width: str, heads: str) -> ArchSpec:
        def pick(c: BlockChoices) -> BlockSpec:
            w = {"full": 1.0, "min": min(c.widths), "mid": sorted(c.widths)[len(c.widths) // 2]}[width]
            h = None if not c.heads else (min(c.heads) if heads == "min" else c.heads_base)
            return BlockSpec(keep=True, width=w, heads=h)

        return ArchSpec(space.model, tuple(tuple(pick(c) for c in stage) for stage in space.stages), space.model_kwargs)

    return all_kept("full", "full"), all_kept("min", "min"), all_kept("min", "full"), all_kept("mid", "min")
