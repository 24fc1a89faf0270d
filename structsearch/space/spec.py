"""`ArchSpec`: the structure of one student, as a frozen, hashable, JSON-serialisable value.

A student is a base model (a timm name plus constructor kwargs) with per-block reductions:

* ``keep``  -- whether the block survives (only blocks whose input and output shapes match can be
  dropped; every stage keeps at least one block);
* ``width`` -- the ratio of the block's internal width that is kept (bottleneck channels, expansion
  channels, or MLP hidden size), taken from the space's discrete grid;
* ``heads`` -- the number of attention heads kept (ViT blocks only; ``None`` elsewhere).

The spec says *what* the structure is; which channels survive is decided at surgery time by an
importance strategy and recorded in the student's recipe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structsearch.errors import SpecError

#: Ratios of a block's internal width that the search may keep. Eighths keep channel counts of
#: typical widths (16, 64, 96, 384, 1536, ...) integral and close to multiples of 8.
WIDTH_GRID: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


@dataclass(frozen=True)
class BlockSpec:
    """The reductions applied to one block."""

    keep: bool = True
    width: float = 1.0
    heads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"keep": self.keep, "width": self.width}
        if self.heads is not None:
            d["heads"] = self.heads
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> BlockSpec:
        if not isinstance(d, dict):
            raise SpecError(f"{where}: expected an object with 'keep', 'width' (and 'heads'), got {d!r}")
        unknown = set(d) - {"keep", "width", "heads"}
        if unknown:
            raise SpecError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: keep, width, heads")
        keep = d.get("keep", True)
        width = d.get("width", 1.0)
        heads = d.get("heads")
        if not isinstance(keep, bool):
            raise SpecError(f"{where}: 'keep' must be true or false, got {keep!r}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
            raise SpecError(f"{where}: 'width' must be a ratio in (0, 1], got {width!r}")
        if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or heads < 1):
            raise SpecError(f"{where}: 'heads' must be a positive integer, got {heads!r}")
        return cls(keep=keep, width=float(width), heads=heads)


def _freeze(value: Any) -> Any:
    """Make JSON-like kwargs hashable (dicts -> sorted item tuples, lists -> tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class ArchSpec:
    """A student structure: base model, its constructor kwargs, and one `BlockSpec` per block.

    ``stages[i][j]`` is block ``j`` of stage ``i`` in the base model's order. Build it from a
    :class:`~structsearch.space.Space` (``space.full_spec()``, ``space.sample(rng)``) or from JSON.
    """

    model: str
    stages: tuple[tuple[BlockSpec, ...], ...]
    model_kwargs: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def kwargs(self) -> dict[str, Any]:
        """The base model's constructor kwargs as a plain dict (for ``timm.create_model``)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model_kwargs}

    def blocks(self) -> Iterator[tuple[int, int, BlockSpec]]:
        """Yield ``(stage, index, block)`` for every block, in model order."""
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                yield i, j, block

    def replace_block(self, stage: int, index: int, block: BlockSpec) -> ArchSpec:
        """A copy of this spec with one block replaced."""
        stages = [list(s) for s in self.stages]
        stages[stage][index] = block
        return ArchSpec(self.model, tuple(tuple(s) for s in stages), self.model_kwargs)

    @staticmethod
    def make(model: str, stages: Any, model_kwargs: dict[str, Any] | None = None) -> ArchSpec:
        """Build a spec from nested lists of `BlockSpec` and a kwargs dict."""
        return ArchSpec(model, tuple(tuple(s) for s in stages), _freeze(model_kwargs or {}))

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_kwargs": self.kwargs,
            "stages": [[b.to_dict() for b in stage] for stage in self.stages],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> ArchSpec:
        if not isinstance(d, dict):
            raise SpecError(f"a spec must be a JSON object with 'model' and 'stages', got {type(d).__name__}")
        model = d.get("model")
        if not isinstance(model, str) or not model:
            raise SpecError("spec: 'model' must be a model name such as 'resnet50'")
        stages = d.get("stages")
        if not isinstance(stages, list) or not all(isinstance(s, list) for s in stages):
            raise SpecError("spec: 'stages' must be a list of lists of blocks")
        kwargs = d.get("model_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise SpecError("spec: 'model_kwargs' must be an object")
        parsed = [
            [BlockSpec.from_dict(b, f"stage {i} block {j}") for j, b in enumerate(stage)]
            for i, stage in enumerate(stages)
        ]
        return cls.make(model, parsed, kwargs)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ArchSpec:
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"spec file not found: {p}")
        return cls.from_json(p.read_text())
