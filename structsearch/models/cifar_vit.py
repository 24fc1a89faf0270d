"""A small Vision Transformer for 32 px images (CIFAR-10), registered as the timm model ``cifar_vit``.

timm's ViTs are ImageNet-shaped (16 px patches at 224 px); on CIFAR a 16 px patch leaves 4 tokens.
``cifar_vit`` is timm's own :class:`~timm.models.vision_transformer.VisionTransformer` with patch 4
at 32 px (64 tokens + the class token), width 192, 6 blocks of 3 heads and 10 classes -- ViT-Tiny's
width at CIFAR's scale; any of these can be overridden by kwargs. It is the architecture of the
ViT teacher shipped in ``teachers/`` (trained by ``structsearch teach studies/teach_vit_cifar10.yaml``),
so a spec names it exactly like the CIFAR ResNets: ``model: cifar_vit`` plus a checkpoint.

Its pretrained cfg records the ImageNet statistics the shared CIFAR ResNets were trained with, so
teacher and ViT see the same preprocessed images (one preprocess, one set of cached teacher views).
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer

#: The architecture of the shipped teacher (its checkpoint fits ``create_model("cifar_vit")``).
CIFAR_VIT_ARGS: dict[str, Any] = dict(
    img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=10
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
        first_conv="patch_embed.proj",
        classifier="head",
    )
}


@register_model
def cifar_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT with patch 4 at 32 px, width 192, depth 6, 3 heads, 10 classes (kwargs override any of them)."""
    args = {**CIFAR_VIT_ARGS, **kwargs}
    size = args["img_size"]
    hw = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    # the data config (and so Preprocess.from_model) reads the input size from the cfg: keep it the model's
    overlay = {**(args.pop("pretrained_cfg_overlay", None) or {}), "input_size": (3, *hw)}
    return build_model_with_cfg(VisionTransformer, "cifar_vit", pretrained, pretrained_cfg_overlay=overlay, **args)
