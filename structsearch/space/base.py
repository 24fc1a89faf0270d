"""The search space of one base model, and the contract every family adapter fulfils.

A *family adapter* (one small module per model family: ``cifar_resnet``, ``convnext``, ``cspnet``,
``edgenext``, ``efficientformer``, ``efficientformer_v2``, ``efficientvit``, ``efficientvit_msra``,
``eva``, ``fastvit``, ``ghostnet``, ``hgnet``, ``inception_next``, ``levit``, ``mambaout``,
``metaformer``, ``mobilenet``, ``mobilevit``, ``pvt_v2``, ``regnet``, ``repvit``, ``resnet``,
``resnetv2``, ``rexnet``, ``starnet``, ``swin``, ``tinyvit``, ``vit``) knows two things about the
models it handles:

1. :meth:`Family.describe` -- which blocks exist, which can be dropped, and how wide each one is
   inside (the :class:`Space`);
2. :meth:`Family.shrink` -- how to make a model physically smaller in place to match an
   :class:`~structsearch.space.spec.ArchSpec`, copying the most important channels / heads.

Most modern families (ConvNeXt, EdgeNeXt, EfficientViT (MIT, MSRA), FastViT, RepViT, LeViT, TinyViT,
EfficientFormer V1/V2, MetaFormer, InceptionNeXt, StarNet, MambaOut, PP-HGNet, CSPNet, ResNet-V2,
PVT v2, Swin) are laid out as stages of a ``downsample`` and ``blocks``; their adapters subclass
:class:`~structsearch.space.staged.StagedFamily`, which walks that layout once, and say only how to
narrow one block.

Contract for adapters: ``shrink`` only removes (never adds) structure, must leave a model that
matches the spec exactly, and must be deterministic given the importance strategy. The identity
spec must leave the model's function unchanged. Adapters raise
:class:`~structsearch.errors.SpecError` for specs that do not fit, naming the block.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from structsearch.errors import SpecError
from structsearch.space.spec import WIDTH_GRID, ArchSpec, BlockSpec

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.pruning.importance import Importance


@dataclass(frozen=True)
class BlockChoices:
    """What the search may do to one block.

    ``width_base`` is the teacher's internal width (bottleneck channels, expansion channels or MLP
    hidden size) and ``widths`` the ratios allowed for it. ``heads_base``/``heads`` are the same for
    attention heads (``None`` for blocks without attention, or whose heads are not searched); ``heads``
    defaults to every count from 1 to ``heads_base``. ``unit`` is how many channels the
    surgery keeps or drops together: 1, or a grouped convolution's channels per group, in which
    case every ratio in ``widths`` keeps whole groups (:func:`grouped_widths`).
    """

    name: str
    removable: bool
    width_base: int
    widths: tuple[float, ...] = WIDTH_GRID
    heads_base: int | None = None
    heads: tuple[int, ...] | None = None
    unit: int = 1

    def __post_init__(self) -> None:
        if self.heads is None and self.heads_base is not None:
            object.__setattr__(self, "heads", tuple(range(1, self.heads_base + 1)))

    def channels(self, ratio: float) -> int:
        """Internal width kept for ``ratio`` (at least 1 channel)."""
        return max(1, int(round(self.width_base * ratio)))

    def full(self) -> BlockSpec:
        return BlockSpec(keep=True, width=1.0, heads=self.heads_base)


def grouped_widths(groups: int) -> tuple[float, ...]:
    """The width ratios of a block that keeps whole groups out of ``groups``: the grid's ratios, each
    rounded to the nearest whole number of groups (at least one), so a spec's width is exactly the
    fraction of channels the student has. A 3-group block gets ``(1/3, 2/3, 1)``."""
    return tuple(sorted({max(1, round(groups * r)) / groups for r in WIDTH_GRID}))


@dataclass(frozen=True)
class Space:
    """The block-wise search space of one base model (``model`` + ``model_kwargs``)."""

    model: str
    model_kwargs: tuple[tuple[str, Any], ...]
    family: str
    stages: tuple[tuple[BlockChoices, ...], ...]

    # -- canonical specs -----------------------------------------------------------------------
    def full_spec(self) -> ArchSpec:
        """The identity spec: every block kept at full width and all heads."""
        return ArchSpec(self.model, tuple(tuple(b.full() for b in s) for s in self.stages), self.model_kwargs)

    def smallest_spec(self) -> ArchSpec:
        """The cheapest spec: removable blocks dropped (one kept per stage), narrowest widths, fewest heads."""
        stages = []
        for stage in self.stages:
            keep_one = next((j for j, b in enumerate(stage) if not b.removable), 0)
            stages.append(
                tuple(
                    BlockSpec(
                        keep=(not b.removable) or j == keep_one,
                        width=min(b.widths),
                        heads=min(b.heads) if b.heads else None,
                    )
                    for j, b in enumerate(stage)
                )
            )
        return ArchSpec(self.model, tuple(stages), self.model_kwargs)

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> ArchSpec:
        """A uniformly random valid spec (for property tests, random search and benchmarks)."""
        stages = []
        for stage in self.stages:
            blocks = [
                BlockSpec(
                    keep=(not b.removable) or rng.random() < 0.5,
                    width=rng.choice(b.widths),
                    heads=rng.choice(b.heads) if b.heads else None,
                )
                for b in stage
            ]
            stages.append(_keep_at_least_one(blocks))
        return ArchSpec(self.model, tuple(stages), self.model_kwargs)

    # -- validation ----------------------------------------------------------------------------
    def validate(self, spec: ArchSpec) -> None:
        """Raise :class:`SpecError` naming the first block of ``spec`` that does not fit this space."""
        if spec.model != self.model:
            raise SpecError(f"spec is for model '{spec.model}' but the space is for '{self.model}'")
        if len(spec.stages) != len(self.stages):
            raise SpecError(f"spec has {len(spec.stages)} stages, '{self.model}' has {len(self.stages)}")
        for i, (got, allowed) in enumerate(zip(spec.stages, self.stages)):
            if len(got) != len(allowed):
                raise SpecError(f"stage {i} of the spec has {len(got)} blocks, '{self.model}' has {len(allowed)}")
            if not any(b.keep for b in got):
                raise SpecError(f"stage {i}: every block is dropped; a stage keeps at least one block")
            for j, (b, c) in enumerate(zip(got, allowed)):
                where = f"block {c.name} (stage {i}, block {j})"
                if not b.keep and not c.removable:
                    raise SpecError(f"{where} cannot be dropped: its input and output shapes differ")
                if not any(abs(b.width - w) < 1e-9 for w in c.widths):
                    raise SpecError(f"{where}: width {b.width} is not one of {list(c.widths)}")
                if c.heads is None and b.heads is not None:
                    raise SpecError(f"{where} has no attention heads, but the spec sets heads={b.heads}")
                if c.heads is not None and b.heads not in c.heads:
                    raise SpecError(f"{where}: heads={b.heads} is not one of {list(c.heads)}")

    @property
    def num_blocks(self) -> int:
        return sum(len(s) for s in self.stages)


def _keep_at_least_one(blocks: list[BlockSpec]) -> tuple[BlockSpec, ...]:
    """If every block of a stage was dropped, keep the last one (a stage keeps at least one block)."""
    if not any(b.keep for b in blocks):
        last = blocks[-1]
        blocks[-1] = BlockSpec(keep=True, width=last.width, heads=last.heads)
    return tuple(blocks)


class Family(ABC):
    """A family adapter. Subclass it, set ``name`` and ``kinds`` (or override :meth:`handles`), and
    decorate it with ``@register_family``."""

    #: Registry name, e.g. ``"resnet"``.
    name: ClassVar[str]
    #: One line for ``structsearch models`` / ``GET /api/v1/models``.
    description: ClassVar[str] = ""
    #: timm model names users are likely to want (documentation and tests).
    examples: ClassVar[tuple[str, ...]] = ()

    #: The model classes this family knows: a model of one is handled unless :meth:`unsupported`
    #: names a part of it the adapter cannot narrow or drop.
    kinds: ClassVar[tuple[type[nn.Module], ...]] = ()

    def handles(self, model: nn.Module) -> bool:
        """Whether this adapter understands ``model``: one of its ``kinds``, with nothing unsupported."""
        return isinstance(model, self.kinds) and self.unsupported(model) is None

    def unsupported(self, model: nn.Module) -> str | None:
        """The first part of a model of one of :attr:`kinds` that the adapter cannot narrow or drop, named
        with its type (``"blocks.2.4 (MobileAttention)"``); the "no adapter" error says it. None: nothing."""
        return None

    @abstractmethod
    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        """The choices per block, stage by stage, for ``model`` as built."""

    @abstractmethod
    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        """Shrink ``model`` in place to ``spec`` (already validated) and return the recipe.

        The recipe is JSON-serialisable and records what was kept: block names and the kept
        channel / head indices per block, so a candidate can be explained and rebuilt.
        """

    def cost_owners(self, model: nn.Module) -> dict[str, str]:
        """Layers outside a block whose width that block's choice sets, by module path -> block name
        (e.g. the stem conv a MobileNet's first block narrows with its input). The search's cost
        model counts their MACs and params with that block, so its per-block costs depend on the
        block's own choices only. Families whose blocks narrow only themselves have none."""
        return {}

    def restore_origins(self, model: nn.Module, recipe: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Tag a student rebuilt from its saved files with where its parts came from, as its
        ``recipe`` records. :meth:`shrink` tags the parts it keeps of the teacher; a rebuilt
        student was shrunk from a fresh base instead, so its tags name the wrong parts. Families
        that tag nothing have nothing to restore."""
