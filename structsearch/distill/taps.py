"""Feature taps: the stage outputs that feature KD (FitNets) compares between teacher and student.

A tap is a forward hook on a named stage module. Hooks (rather than each model's own
``forward_intermediates``) work the same for structsearch's ``CifarResNet`` and timm's models,
observe the ordinary ``forward`` -- so one pass yields logits *and* features -- and leave the model
untouched once the :class:`FeatureTap` context exits.

Which modules are stages is a property of the family (the names survive surgery: adapters shrink
blocks inside a stage but keep the stage module and its output width):

* ``cifar_resnet``: ``layer1..3``;  ``resnet``: ``layer1..4``;  ``regnet``: ``s1..s4``;  ``ghostnet``:
  the last row of each resolution stage;
* every stage of the staged families: ``stages.0..N-1`` (``convnext``, ``repvit``, ``tinyvit``,
  ``efficientformer``, ``efficientformer_v2``, ``efficientvit``, ``efficientvit_msra``, ``levit``,
  ``edgenext``, ``fastvit``, ``mobilevit``, ``metaformer``, ``inception_next``, ``starnet``,
  ``pvt_v2``, ``mambaout``, ``hgnet``, ``cspnet``, ``resnetv2``), ``layers.0..N-1`` (``swin``); Swin's and MambaOut's are channels-last
  ``(B, H, W, C)`` maps, compared as they are; ``blocks.0..N-1`` (``mobilenet``); ``features.0..N-1``
  (``rexnet``: every block, none is ever dropped);
* ``vit``, ``eva``: ``blocks.0..N-1`` of the teacher, but students drop whole blocks, so student block
  ``i`` is not teacher block ``i``: :mod:`structsearch.distill.vit_kd` pairs them (and their heads) by
  origin.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from structsearch.errors import FeatureKDError

_FIXED_STAGES: dict[str, tuple[str, ...]] = {
    "cifar_resnet": ("layer1", "layer2", "layer3"),
    "resnet": ("layer1", "layer2", "layer3", "layer4"),
    "regnet": ("s1", "s2", "s3", "s4"),
    # the last row of each resolution stage (timm builds every GhostNet from one table); a row whose
    # blocks were all dropped is an empty Sequential, and its hook still sees the stage's output
    "ghostnet": ("blocks.0", "blocks.2", "blocks.4", "blocks.6", "blocks.8"),
}

#: Families whose stages are every member of one list attribute, and that attribute.
_STAGE_LISTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "convnext",
            "repvit",
            "tinyvit",
            "efficientformer",
            "efficientformer_v2",
            "efficientvit",
            "levit",
            "edgenext",
            "fastvit",
            "mobilevit",
            "metaformer",
            "inception_next",
            "starnet",
            "pvt_v2",
            "efficientvit_msra",
            "mambaout",
            "hgnet",
            "cspnet",
            "resnetv2",
        ),
        "stages",
    ),
    "swin": "layers",
    "mobilenet": "blocks",
    "rexnet": "features",  # every block: none is ever dropped, and each is its own width
    "vit": "blocks",
    "eva": "blocks",
}

#: Families whose feature KD pairs blocks by origin (:mod:`structsearch.distill.vit_kd`), not by name.
VIT_FAMILIES = ("vit", "eva")


def _family_name(model: nn.Module) -> str:
    from structsearch.space import family_for

    return family_for(model).name


def stage_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the stage modules of ``model`` whose outputs feature KD compares."""
    family = _family_name(model)
    if family in _FIXED_STAGES:
        return _FIXED_STAGES[family]
    if family in _STAGE_LISTS:
        attr = _STAGE_LISTS[family]
        return tuple(f"{attr}.{i}" for i in range(len(getattr(model, attr))))
    raise FeatureKDError(
        f"feature KD is not supported for {family} models (their blocks do not align between "
        "teacher and student); run without --feature-kd to distil from logits"
    )


def check_feature_pair(teacher: nn.Module, student: nn.Module) -> tuple[str, ...]:
    """The stage names shared by teacher and student, or an error when feature KD cannot pair them."""
    t_family, s_family = _family_name(teacher), _family_name(student)
    if t_family != s_family:
        raise FeatureKDError(
            f"feature KD needs teacher and student of the same family, got {t_family} and {s_family}; "
            "a student of another family distils from logits only (turn feature KD off)"
        )
    names, s_names = stage_names(teacher), stage_names(student)
    if names != s_names and t_family not in VIT_FAMILIES:  # ViT blocks are paired by origin (distill.vit_kd)
        raise FeatureKDError(f"teacher stages {names} and student stages {s_names} differ")
    return names


class Hooks:
    """Hooks a class put on a model (``handles``), removed together by :meth:`remove`."""

    handles: list[RemovableHandle]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class FeatureTap(Hooks):
    """Collect the outputs of the named modules during a forward pass (see :func:`tapped`)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise FeatureKDError(f"{type(model).__name__} has no module(s) {missing} to tap")
        self.names = names
        self.outputs: list[Tensor] = []
        self.handles = [modules[n].register_forward_hook(self._hook) for n in names]

    def _hook(self, module: nn.Module, inputs: object, output: Tensor) -> None:
        self.outputs.append(output)

    def take(self) -> list[Tensor]:
        """The outputs of the last forward pass, in stage order; clears them for the next pass."""
        out, self.outputs = self.outputs, []
        if len(out) != len(self.names):
            raise RuntimeError(f"expected {len(self.names)} tapped outputs, got {len(out)}")
        return out

    def clear(self) -> None:
        """Forget recorded outputs (after a pass whose features are not needed, e.g. evaluation)."""
        self.outputs = []


@contextmanager
def tapped(model: nn.Module, names: tuple[str, ...]) -> Iterator[FeatureTap]:
    """``with tapped(model, names) as tap: model(x); feats = tap.take()`` -- hooks removed on exit."""
    tap = FeatureTap(model, names)
    try:
        yield tap
    finally:
        tap.remove()
