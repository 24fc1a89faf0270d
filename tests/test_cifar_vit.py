"""``cifar_vit``: the ViT teacher's architecture -- a conv stem to the patchify layer's grid, or the plain patchify layer."""

from __future__ import annotations

import pytest
import torch
from timm.layers import PatchEmbed

from structsearch.cost import measure_cost
from structsearch.errors import UnknownModelError
from structsearch.models import create_model
from structsearch.models.cifar_vit import ConvStem


def test_the_conv_stem_gives_the_patchify_grid_and_adds_about_one_block_of_macs() -> None:
    conv, patch = create_model("cifar_vit", seed=0), create_model("cifar_vit", seed=0, stem="patch")
    assert isinstance(conv.patch_embed, ConvStem) and type(patch.patch_embed) is PatchEmbed
    x = torch.randn(2, 3, 32, 32)
    tokens = conv.patch_embed(x)
    assert tokens.shape == patch.patch_embed(x).shape == (2, 64, 192)
    # the stem halves the resolution once per halving of the patch size: 32 -> 16 -> 8
    strides = [m.stride[0] for m in conv.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert strides == [1, 2, 2, 1]
    assert conv.patch_embed.proj[-1].out_channels == 192
    extra = measure_cost(conv, 32).macs - measure_cost(patch, 32).macs
    one_block = measure_cost(patch, 32).macs - measure_cost(create_model("cifar_vit", stem="patch", depth=5), 32).macs
    assert 0 < extra < one_block  # measured: 24.8M against 29.9M per block


def test_a_conv_stem_vit_runs_at_other_resolutions_with_dynamic_img_size() -> None:
    vit = create_model("cifar_vit", seed=0, dynamic_img_size=True, depth=1).eval()
    assert vit(torch.randn(1, 3, 24, 24)).shape == (1, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stem": "resnet"}, "stem must be one of"),
        ({"patch_size": 3}, "power-of-two patch size"),
        ({"img_size": 30}, "divisible by the patch size 4"),  # the stem would make 64 tokens for 49 positions
    ],
)
def test_bad_stems_are_one_line_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UnknownModelError, match=message) as e:
        create_model("cifar_vit", **kwargs)
    assert "\n" not in str(e.value)


def test_the_conv_stem_keeps_its_patch_size_when_the_input_size_changes() -> None:
    vit = create_model("cifar_vit", seed=0, depth=1)
    vit.set_input_size(img_size=16)
    assert vit.patch_embed.grid_size == (4, 4) and vit.eval()(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    with pytest.raises(ValueError, match="cannot change its patch size"):
        vit.set_input_size(patch_size=8)
