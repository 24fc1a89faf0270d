"""A small Vision Transformer for 32 px images (CIFAR-10), registered as the timm model ``cifar_vit``.

timm's ViTs are ImageNet-shaped (16 px patches at 224 px); on CIFAR a 16 px patch leaves 4 tokens.
``cifar_vit`` is timm's own :class:`~timm.models.vision_transformer.VisionTransformer` with patch 4
at 32 px (64 tokens + the class token), width 192, 6 blocks of 3 heads and 10 classes -- ViT-Tiny's
width at CIFAR's scale; any of these can be overridden by kwargs.

Its patches are embedded by a small convolutional stem (``stem="conv"``, :class:`ConvStem`) instead
of one strided 4x4 convolution (``stem="patch"``): Xiao et al., "Early Convolutions Help
Transformers See Better" (NeurIPS 2021) show that a few 3x3 convolutions in place of the patchify
layer make ViTs converge much faster and less sensitively to the optimiser, for about the FLOPs of
one transformer block -- what a teacher trained in two CPU-hours needs. The stem has no BatchNorm
(LayerNorm over channels instead), so the model still has no running statistics and data-free
synthesis stays PSAQ-ViT's, and the transformer blocks the search cuts are unchanged. It is the architecture of the
ViT teacher shipped in ``teachers/`` (trained by ``structsearch teach studies/teach_vit_cifar10.yaml``),
so a spec names it exactly like the CIFAR ResNets: ``model: cifar_vit`` plus a checkpoint.

Its pretrained cfg records the ImageNet statistics the shared CIFAR ResNets were trained with, so
teacher and ViT see the same preprocessed images (one preprocess, one set of cached teacher views).
"""

from __future__ import annotations

from typing import Any

from timm.layers import LayerNorm2d, PatchEmbed, to_2tuple
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class ConvStem(PatchEmbed):
    """timm's :class:`PatchEmbed` whose ``proj`` is a 3x3 convolution stack instead of one patchify conv.

    ``proj`` is a 3x3 convolution at full resolution to ``embed_dim / 4`` channels, then one stride-2
    3x3 convolution per halving of the patch size (channels doubling up to ``embed_dim``), each with
    LayerNorm over channels and GELU, and a final 1x1 projection (Xiao et al., 2021). The output grid
    is the patchify layer's (``img_size / patch_size``), so everything downstream -- position
    embedding, token count, FLOPs of the blocks -- is that of the plain ViT. The image size must be a
    multiple of the patch size: the patchify layer crops a remainder, strided convolutions round up.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        patch = self.patch_size[0]
        if self.patch_size[0] != self.patch_size[1] or patch < 2 or patch & (patch - 1):
            raise ValueError(f"stem='conv' needs a square power-of-two patch size, got {self.patch_size}")
        if self.img_size is not None and any(side % patch for side in self.img_size):
            raise ValueError(
                f"stem='conv' needs an image size divisible by the patch size {patch}, got {self.img_size}"
            )
        factory: dict[str, Any] = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        embed_dim: int = self.proj.out_channels
        width = max(1, embed_dim // 4)
        layers: list[nn.Module] = [*_conv(self.proj.in_channels, width, 1, factory)]
        while patch > 1:
            nxt = min(embed_dim, width * 2)
            layers += _conv(width, nxt, 2, factory)
            width, patch = nxt, patch // 2
        layers.append(nn.Conv2d(width, embed_dim, 1, bias=kwargs.get("bias", True), **factory))
        self.proj = nn.Sequential(*layers)  # type: ignore[assignment]

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        """A new image size is fine (the grid follows); a new patch size would need another stem."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("stem='conv' cannot change its patch size; build the model with the new patch_size")
        super().set_input_size(img_size=img_size)


def _conv(cin: int, cout: int, stride: int, factory: dict[str, Any]) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False, **factory),
        LayerNorm2d(cout, **factory),
        nn.GELU(),
    ]


#: ``stem`` kwarg -> timm embed layer.
STEMS: dict[str, type[PatchEmbed]] = {"conv": ConvStem, "patch": PatchEmbed}

#: The architecture of the shipped teacher (its checkpoint fits ``create_model("cifar_vit")``).
CIFAR_VIT_ARGS: dict[str, Any] = dict(
    img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=10, stem="conv"
)

default_cfgs = {
    "cifar_vit": dict(
        url="",
        num_classes=10,
        input_size=(3, 32, 32),
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        first_conv="patch_embed.proj.0",  # the conv stem's first layer; patch_embed.proj with stem="patch"
        classifier="head",
    )
}


@register_model
def cifar_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT with a conv stem to patch 4 at 32 px, width 192, depth 6, 3 heads, 10 classes (kwargs override any)."""
    args = {**CIFAR_VIT_ARGS, **kwargs}
    stem = args.pop("stem")
    if stem not in STEMS:
        raise ValueError(f"cifar_vit stem must be one of {sorted(STEMS)}, got {stem!r}")
    args["embed_layer"] = STEMS[stem]
    size = args["img_size"]
    hw = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    # the data config (and so Preprocess.from_model) reads the input size from the cfg: keep it the model's
    overlay = {**(args.pop("pretrained_cfg_overlay", None) or {}), "input_size": (3, *hw)}
    if stem == "patch":
        overlay["first_conv"] = "patch_embed.proj"
    return build_model_with_cfg(VisionTransformer, "cifar_vit", pretrained, pretrained_cfg_overlay=overlay, **args)
