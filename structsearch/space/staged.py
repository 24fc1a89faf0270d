"""The adapter base of the staged families: ``<stages>.0..N-1``, each a ``downsample`` and ``blocks``.

Most modern timm models -- ConvNeXt, RepViT, LeViT, TinyViT, EfficientFormer, Swin -- share one
layout: a list of stages, each an optional ``downsample`` (the stride and width change) followed by
``blocks``, a ``Sequential`` (or ``ModuleList``) of residual blocks on the stage's width. Walking the
stages, naming the blocks, refusing the parts an adapter cannot slice, building the
:class:`BlockChoices` and dropping blocks is the same for all of them, so it lives here once; a
family says only what differs, per block:

* :meth:`StagedFamily.block_ok` -- whether the adapter can narrow this block (timm's exact type,
  sliceable layers);
* :meth:`StagedFamily.width_base` / :meth:`StagedFamily.shrink_width` -- the block's searched inner
  width (MLP hidden size, expansion) and how to keep ``channels`` of it;
* :meth:`StagedFamily.heads_base` / :meth:`StagedFamily.shrink_heads` -- the same for attention
  heads, for blocks whose heads are searched.

A stage's ``downsample`` is searched (in width only: it changes the shapes, so it is never dropped)
when the family sets ``search_downsample``; blocks that :meth:`StagedFamily.searched` excludes
(EfficientFormer's weightless ``Flat``) are always kept. A family whose stage is itself the
``Sequential`` of its blocks (StarNet: a downsampler, then blocks) sets ``blocks_attr = None``. Block
names are the modules' own paths (``stages.2.blocks.0``, ``layers.1.downsample``, ``stages.2.1``), so
a recipe names what it cut.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, cast

from torch import nn

from structsearch.pruning.ops import keep_blocks
from structsearch.space.base import BlockChoices, Family, grouped_widths
from structsearch.space.spec import WIDTH_GRID, ArchSpec

if TYPE_CHECKING:  # pragma: no cover
    from structsearch.pruning.importance import Importance


class StagedFamily(Family):
    """A family of ``<stages_attr>.i.{downsample, blocks}`` models; subclasses implement the per-block hooks."""

    #: The model's attribute holding the stages (``stages``; Swin's ``layers``).
    stages_attr: ClassVar[str] = "stages"
    #: The exact stage types the adapter knows (a subclass may compute something else).
    stage_kinds: ClassVar[tuple[type[nn.Module], ...]] = ()
    #: Whether a stage's (non-identity) ``downsample`` is a searched block of its own.
    search_downsample: ClassVar[bool] = False
    #: The stage's attribute holding its blocks; None when the stage is itself the ``Sequential`` of
    #: its blocks (StarNet's ``Sequential(downsampler, *blocks)``: the members :meth:`searched`
    #: excludes, like that downsampler, stay where they are).
    blocks_attr: ClassVar[str | None] = "blocks"

    # -- per-block hooks ------------------------------------------------------------------------
    @abstractmethod
    def block_ok(self, block: nn.Module) -> bool:
        """Whether this adapter can narrow (and, when :meth:`removable`, drop) ``block``."""

    @abstractmethod
    def width_base(self, block: nn.Module) -> int:
        """The teacher's searched inner width of ``block`` (the channels ``BlockSpec.width`` scales)."""

    @abstractmethod
    def shrink_width(self, block: nn.Module, channels: int, importance: Importance) -> dict[str, list[int]]:
        """Keep the ``channels`` most important inner channels of ``block``; the recipe entries
        (``{"channels": kept indices}``, plus any other part narrowed with them)."""

    def heads_base(self, block: nn.Module) -> int | None:
        """The block's attention heads when they are searched; None (the default) when not."""
        return None

    def shrink_heads(self, block: nn.Module, heads: int, importance: Importance) -> list[int]:
        """Keep the ``heads`` most important heads of ``block``; their indices. Only called for blocks
        whose :meth:`heads_base` is not None."""
        raise NotImplementedError(f"{type(self).__name__} searches no heads")

    def unit(self, block: nn.Module) -> int:
        """How many of the block's inner channels are kept or dropped together (a GroupNorm's or a
        grouped conv's groups); 1, the default, for single channels."""
        return 1

    def searched(self, block: nn.Module) -> bool:
        """Whether a member of ``blocks`` is searched at all (False: kept as it is, e.g. a reshape)."""
        return True

    def removable(self, block: nn.Module) -> bool:
        """Whether ``block`` can be dropped: residual, same shape in and out (the default)."""
        return True

    def refused(self, block: nn.Module) -> str:
        """How the "no adapter" error names a block :meth:`block_ok` refuses (its type by default)."""
        return type(block).__name__

    # -- the walk every staged family shares --------------------------------------------------------
    def stages(self, model: nn.Module) -> list[nn.Module]:
        return list(getattr(model, self.stages_attr, ()))

    def blocks_of(self, stage: nn.Module) -> nn.Module | None:
        """The stage's container of blocks (``stage.blocks``, or the stage itself)."""
        return stage if self.blocks_attr is None else getattr(stage, self.blocks_attr, None)

    def _block_path(self, j: int) -> str:
        return str(j) if self.blocks_attr is None else f"{self.blocks_attr}.{j}"

    def searched_blocks(self, stage: nn.Module) -> list[tuple[str, nn.Module]]:
        """The stage's searched blocks by their path in the stage: ``downsample`` first when it is
        searched, then ``blocks.j`` (``j`` where the stage is its blocks)."""
        down = getattr(stage, "downsample", None)
        first = (
            [("downsample", down)] if self.search_downsample and not isinstance(down, (nn.Identity, type(None))) else []
        )
        blocks = cast(nn.Module, self.blocks_of(stage)).children()
        return first + [(self._block_path(j), b) for j, b in enumerate(blocks) if self.searched(b)]

    def unsupported(self, model: nn.Module) -> str | None:
        attr, stages = self.stages_attr, self.stages(model)
        if not stages:
            return f"{attr} (none)"
        for i, stage in enumerate(stages):
            blocks = self.blocks_of(stage)
            if type(stage) not in self.stage_kinds or not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
                return f"{attr}.{i} ({type(stage).__name__})"
            searched = self.searched_blocks(stage)
            if not searched:  # (a student's stage may keep its searched downsample only)
                return f"{attr}.{i}.blocks (no searched block)"
            for name, block in searched:
                if not self.block_ok(block):
                    return f"{attr}.{i}.{name} ({self.refused(block)})"
        return None

    def describe(self, model: nn.Module) -> tuple[tuple[BlockChoices, ...], ...]:
        return tuple(
            tuple(self._choices(f"{self.stages_attr}.{i}.{name}", block) for name, block in self.searched_blocks(stage))
            for i, stage in enumerate(self.stages(model))
        )

    def _choices(self, path: str, block: nn.Module) -> BlockChoices:
        base, unit = self.width_base(block), self.unit(block)
        return BlockChoices(
            name=path,
            removable=not path.endswith(".downsample") and self.removable(block),
            width_base=base,
            widths=grouped_widths(base // unit) if unit > 1 else WIDTH_GRID,
            heads_base=self.heads_base(block),
            unit=unit,
        )

    def shrink(self, model: nn.Module, spec: ArchSpec, importance: Importance) -> dict[str, Any]:
        recipe: dict[str, Any] = {}
        stages = cast(nn.Module, getattr(model, self.stages_attr))
        for i, (stage, stage_spec, choices) in enumerate(zip(self.stages(model), spec.stages, self.describe(model))):
            kept: dict[str, bool] = {}
            for (name, block), b, c in zip(self.searched_blocks(stage), stage_spec, choices):
                entry: dict[str, Any] = {"keep": b.keep}
                if b.keep and b.width < 1.0:
                    entry.update(self.shrink_width(block, c.channels(b.width), importance))
                if b.keep and b.heads is not None and b.heads < (c.heads_base or 0):
                    entry["heads"] = self.shrink_heads(block, b.heads, importance)
                recipe[c.name] = entry
                kept[name] = b.keep
            blocks = cast(nn.Module, self.blocks_of(stage))
            members = nn.Sequential(*blocks.children())
            keep = [kept.get(self._block_path(j), True) for j in range(len(members))]
            remaining = keep_blocks(members, keep)
            if self.blocks_attr is None:  # the stage is its blocks: a new stage in the model's list
                stages.add_module(str(i), remaining)
            else:
                setattr(
                    stage,
                    self.blocks_attr,
                    remaining if isinstance(blocks, nn.Sequential) else nn.ModuleList(remaining),
                )
        return {"blocks": recipe}
