"""Small instances of every registered family, used by the tests parametrised over the registry.

Each case is (model name, constructor kwargs, input resolution), chosen small so property tests
over random specs stay fast. A family registered without a case here fails `test_every_family_has_cases`.
"""

from __future__ import annotations

#: A small Swin (V1 or V2) at 32 px: windows of 4 over 8x8 tokens, then 4x4 tokens in one window, ...
SMALL_SWIN = {
    "num_classes": 10,
    "img_size": 32,
    "window_size": 4,
    "embed_dim": 32,
    "depths": (2, 2, 2, 2),
    "num_heads": (2, 2, 4, 4),
    "mlp_ratio": 2.0,
}

FAMILY_CASES: dict[str, list[tuple[str, dict, int]]] = {
    "cifar_resnet": [("cifar_resnet20", {}, 32)],
    "convnext": [
        ("convnext_atto", {"num_classes": 10}, 32),  # 1x1-conv MLP, layer scale
        ("convnextv2_atto", {"num_classes": 10}, 32),  # GRN in the MLP, no layer scale
        (  # linear MLP on channels-last pixels, as convnext_tiny and larger build it
            "convnext_tiny",
            {"num_classes": 10, "dims": (16, 32, 64, 128), "depths": (2, 2, 4, 2), "ls_init_value": 1.0},
            32,
        ),
    ],
    "cspnet": [
        # YOLOv5-style cross stages (CrossStage3) of dark blocks: 1x1 then 3x3
        ("cs3darknet_s", {"num_classes": 10}, 32),
        # cross stages of bottleneck blocks: 1x1, 3x3, 1x1
        ("cspresnet50", {"num_classes": 10}, 32),
    ],
    "edgenext": [
        # conv blocks, then a split-transpose (cross-covariance attention) block ending stages 1..3
        ("edgenext_xx_small", {"num_classes": 10}, 32),
    ],
    "eva": [
        # DINOv3-style: 4 register tokens, RoPE, layer scale, plain Mlp (ViT-S's layout at a quarter of its width)
        (
            "vit_small_patch16_dinov3",
            {"num_classes": 10, "img_size": 64, "depth": 3, "embed_dim": 96, "num_heads": 2},
            64,
        ),
        # EVA-02: GluMlp (value and gate halves of one fc1), RoPE
        ("eva02_tiny_patch14_224", {"num_classes": 10, "img_size": 56, "depth": 3}, 56),
        # EVA-02 B/L: SwiGLU (separate value and gate layers) with a hidden LayerNorm (scale_mlp)
        (
            "eva02_base_patch14_224",
            {"num_classes": 10, "img_size": 56, "depth": 2, "embed_dim": 96, "num_heads": 2},
            56,
        ),
    ],
    "fastvit": [
        # RepMixer blocks, then conditional position encoding and attention blocks in the last stage
        ("fastvit_sa12", {"num_classes": 10, "layers": (2, 1, 2, 2), "embed_dims": (16, 32, 64, 128)}, 32),
    ],
    "efficientformer": [
        # pooling meta blocks, then Flat and an attention block (8 heads, biases for 7x7 tokens: 224 px)
        ("efficientformer_l1", {"num_classes": 10, "embed_dims": (16, 32, 48, 64), "depths": (2, 2, 2, 3)}, 224),
    ],
    "efficientformer_v2": [
        # conv-MLP blocks, then attention blocks (talking heads; biases for 1x1 maps at 32 px)
        (
            "efficientformerv2_s0",
            {"num_classes": 10, "img_size": 32, "depths": (2, 2, 3, 2), "embed_dims": (16, 24, 48, 88)},
            32,
        ),
    ],
    "efficientvit": [
        # MBConv stages, then blocks of multi-scale linear attention + MBConv (B series; L adds FusedMBConv)
        ("efficientvit_b0", {"num_classes": 10}, 32),
    ],
    "pvt_v2": [
        # spatial-reduction attention (keys and values from an 8x, 4x, 2x strided conv), MLPs with a depthwise conv
        ("pvt_v2_b0", {"num_classes": 10}, 32),
    ],
    "efficientvit_msra": [
        # sandwich blocks (depthwise conv, FFN, cascaded group attention in 7x7 windows, depthwise conv, FFN)
        # on 2x2 and 1x1 maps at 32 px; downsamples of two residual FFNs around a PatchMerging with SE; fewer
        # blocks than m0's (1, 2, 3): its per-head attention loop makes every fvcore trace slow
        ("efficientvit_m0", {"num_classes": 10, "img_size": 32, "depth": (1, 1, 2)}, 32),
    ],
    "regnet": [
        ("regnety_002", {"num_classes": 10}, 32),  # Bottleneck with SE, grouped conv2 (8 channels per group)
        ("regnetx_002", {"num_classes": 10, "preact": True}, 32),  # PreBottleneck (timm overlays cfg kwargs)
    ],
    "repvit": [
        # fewer blocks than repvit_m0_9's (2, 2, 14, 2); SE in every other block, distillation head
        ("repvit_m0_9", {"num_classes": 10, "depth": (2, 2, 3, 1)}, 32),
    ],
    "resnet": [
        ("resnet18", {"num_classes": 10}, 64),
        ("resnet50", {"num_classes": 10}, 64),
        # grouped conv2 (32 groups of 4..32 channels); fewer blocks than resnext50_32x4d's (3, 4, 6, 3)
        ("resnext50_32x4d", {"num_classes": 10, "layers": (2, 3, 3, 2)}, 64),
    ],
    "hgnet": [
        # PP-HGNetV2: chains of 3 convs (3x3, then 1x1 + depthwise 5x5 "light" ones) aggregated by two 1x1s
        ("hgnetv2_b0", {"num_classes": 10}, 32),
    ],
    "inception_next": [
        # inception depthwise mixers (3x3 square and 1x9 / 9x1 bands on channel splits), BatchNorm, ConvMlp
        ("inception_next_atto", {"num_classes": 10, "depths": (2, 1, 3, 1), "dims": (16, 32, 64, 128)}, 32),
    ],
    "mambaout": [
        # gated CNN blocks on channels-last maps: gate, identity and depthwise-conv parts of one fc1
        ("mambaout_femto", {"num_classes": 10, "depths": (2, 1, 2, 1)}, 32),
    ],
    "metaformer": [
        # timm's MetaFormer entry points fix depths and widths, so these are the smallest it builds:
        # separable-conv blocks, then attention blocks on tokens (10 and 16 heads of 32 channels)
        ("caformer_s18", {"num_classes": 10}, 32),
        # PoolFormer V1: pooling mixers, GroupNorm, biased GELU MLPs with layer scale
        ("poolformer_s12", {"num_classes": 10}, 32),
    ],
    "resnetv2": [
        # pre-activation bottlenecks with BatchNorm; fewer blocks than resnetv2_50's (3, 4, 6, 3)
        ("resnetv2_50", {"num_classes": 10, "layers": (1, 2, 1, 1)}, 32),
        # BiT: GroupNorms of 32 groups (blocks narrow by whole groups), weight-standardised convs
        ("resnetv2_50x1_bit", {"num_classes": 10}, 32),
    ],
    "levit": [
        # 4x4 tokens at 64 px, then subsampling attention to 2x2 and 1x1; BatchNorms on every linear layer
        ("levit_128s", {"num_classes": 10, "img_size": 64}, 64),
    ],
    "mobilenet": [
        ("mobilenetv2_100", {"num_classes": 10}, 64),
        ("efficientnet_b0", {"num_classes": 10}, 64),
        ("mobilenetv4_conv_small", {"num_classes": 10}, 64),  # universal inverted residuals (UIB)
    ],
    "mobilevit": [
        # inverted residuals, then MobileViT blocks of 2-4 ViT blocks on 2x2 patches (4x4 to 1x1 maps at 32 px:
        # the last is interpolated to one patch, as timm does for maps smaller than a patch)
        ("mobilevit_xxs", {"num_classes": 10}, 32),
        # V2: separable (linear) self-attention, no heads; ConvMlp on (B, C, P, N) patches
        ("mobilevitv2_050", {"num_classes": 10}, 32),
    ],
    "rexnet": [
        # linear bottlenecks widening at every block (partial residuals), SE with a BatchNorm
        ("rexnet_100", {"num_classes": 10}, 32),
    ],
    "ghostnet": [
        # GhostNetV2 at half width: GhostModule in its first two blocks and every ghost2, GhostModuleV2
        # (a gate branch per channel) in every other ghost1; SE; stride-2 blocks with conv_dw. At 64 px,
        # as V2's gate pools each block's input by 2 and the last stage's maps are 1x1 at 32 px.
        ("ghostnet_050", {"num_classes": 10, "version": "v2"}, 64),
    ],
    "starnet": [
        # stages of a stride-2 ConvBN and star blocks (depthwise 7x7, f1 * f2 hidden, g, depthwise 7x7)
        ("starnet_s050", {"num_classes": 10}, 32),
    ],
    "swin": [
        # windows of 4 at 32 px (8x8 tokens, then 4x4 in one window, ...), every other block's shifted
        (
            "swin_tiny_patch4_window7_224",
            SMALL_SWIN,
            32,
        ),
        # V2: post-norm blocks, cosine attention with a position-bias MLP; heads stay, depth and MLP width shrink
        (
            "swinv2_tiny_window8_256",
            SMALL_SWIN,
            32,
        ),
    ],
    "tinyvit": [
        # MBConv stage, then windowed attention (windows of 4 and 2 at 32 px) with per-head biases
        (
            "tiny_vit_5m_224",
            {
                "num_classes": 10,
                "embed_dims": (16, 32, 48, 64),
                "depths": (2, 2, 2, 1),
                "num_heads": (1, 2, 3, 4),
                "window_sizes": (4, 4, 2, 1),
                "mlp_ratio": 2.0,
            },
            32,
        ),
    ],
    "vit": [
        ("vit_tiny_patch16_224", {"num_classes": 10, "img_size": 32, "patch_size": 4}, 32),
        ("deit_tiny_patch16_224", {"num_classes": 10, "img_size": 64, "patch_size": 16}, 64),
    ],
    "detector": [
        (
            "fcos_detector",
            {"backbone": "cifar_resnet20", "num_classes": 3, "image_size": 32, "stages": 1, "fpn_channels": 32},
            32,
        )
    ],
}

CASES = [(fam, *case) for fam, cases in FAMILY_CASES.items() for case in cases]
CASE_IDS = [c[1] for c in CASES]
