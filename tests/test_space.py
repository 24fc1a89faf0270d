"""Property tests over every registered family: students build, run, shrink, and inherit weights."""

from __future__ import annotations

import copy
import functools
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from structsearch.cost import measure_cost
from structsearch.errors import CostError, NoAdapterError, SpecError, UnknownModelError
from structsearch.models import check_model_name, create_model
from structsearch.space import ArchSpec, BlockSpec, Space, family_for, list_families, space_of
from structsearch.surgery import RandomImportance, build_student, build_student_with_recipe, save_student
from tests.families import CASE_IDS, CASES, FAMILY_CASES

#: Random specs per registry case: 4 x 44 cases x 2 properties keeps the suite in its 15 minutes
PROPERTY = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _position(space: Space, name: str) -> tuple[int, int]:
    """The (stage, index) of the block called ``name`` in ``space``, for ``ArchSpec.replace_block``."""
    return next((i, j) for i, stage in enumerate(space.stages) for j, c in enumerate(stage) if c.name == name)


@functools.cache
def teacher_and_space(name: str, kwargs_items: tuple) -> tuple[torch.nn.Module, Space, int]:
    torch.manual_seed(0)
    kwargs = dict(kwargs_items)
    teacher = create_model(name, **kwargs).eval()
    return teacher, space_of(teacher, name, kwargs), measure_cost(teacher, _size(name)).macs


def _size(name: str) -> int:
    return next(c[3] for c in CASES if c[1] == name)


def _setup(name: str, kwargs: dict):
    return teacher_and_space(name, tuple(sorted(kwargs.items())))


def test_every_family_has_cases() -> None:
    assert {f.name for f in list_families()} == set(FAMILY_CASES)


@pytest.mark.parametrize("family,name,kwargs,size", CASES, ids=CASE_IDS)
def test_family_found_by_model(family: str, name: str, kwargs: dict, size: int) -> None:
    teacher, space, _ = _setup(name, kwargs)
    assert family_for(teacher).name == family == space.family
    assert space.num_blocks > 0


@pytest.mark.parametrize("family,name,kwargs,size", CASES, ids=CASE_IDS)
def test_identity_spec_reproduces_teacher(family: str, name: str, kwargs: dict, size: int) -> None:
    teacher, space, _ = _setup(name, kwargs)
    student = build_student(teacher, space.full_spec()).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize("family,name,kwargs,size", CASES, ids=CASE_IDS)
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1))
def test_random_student_is_smaller_and_runs(family: str, name: str, kwargs: dict, size: int, seed: int) -> None:
    teacher, space, teacher_macs = _setup(name, kwargs)
    spec = space.sample(random.Random(seed))
    space.validate(spec)
    student = build_student(teacher, spec).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out, expected = student(x), teacher(x)
    assert out.shape == expected.shape  # (2, classes); a detector's (2, locations, classes + 5)
    cost = measure_cost(student, size)
    assert cost.macs <= teacher_macs
    assert cost.params <= sum(p.numel() for p in teacher.parameters())


@pytest.mark.parametrize("family,name,kwargs,size", CASES, ids=CASE_IDS)
@PROPERTY
@given(seed=st.integers(0, 2**31 - 1))
def test_single_width_reduction_never_raises_macs(family: str, name: str, kwargs: dict, size: int, seed: int) -> None:
    teacher, space, _ = _setup(name, kwargs)
    rng = random.Random(seed)
    spec = space.sample(rng)
    candidates = [(i, j, b) for i, j, b in spec.blocks() if b.keep and b.width > min(space.stages[i][j].widths)]
    if not candidates:
        return
    i, j, b = rng.choice(candidates)
    narrower = max(w for w in space.stages[i][j].widths if w < b.width)
    reduced = spec.replace_block(i, j, BlockSpec(keep=True, width=narrower, heads=b.heads))
    before = measure_cost(build_student(teacher, spec), size).macs
    after = measure_cost(build_student(teacher, reduced), size).macs
    assert after <= before


@pytest.mark.parametrize("family,name,kwargs,size", CASES, ids=CASE_IDS)
def test_smallest_spec_is_valid_and_cheapest(family: str, name: str, kwargs: dict, size: int) -> None:
    teacher, space, teacher_macs = _setup(name, kwargs)
    smallest = measure_cost(build_student(teacher, space.smallest_spec()), size).macs
    assert smallest < teacher_macs
    sample = measure_cost(build_student(teacher, space.sample(random.Random(1))), size).macs
    assert smallest <= sample


@pytest.mark.parametrize("family,name,kwargs,size", CASES, ids=CASE_IDS)
def test_random_importance_differs_from_l1(family: str, name: str, kwargs: dict, size: int) -> None:
    teacher, space, _ = _setup(name, kwargs)
    spec = space.smallest_spec()
    _, r1 = build_student_with_recipe(teacher, spec)
    _, r2 = build_student_with_recipe(teacher, spec, RandomImportance(seed=3))
    assert r1["importance"] == "l1" and r2["importance"] == "random"
    assert r1["blocks"] != r2["blocks"]


def test_saved_students_reload_in_a_fresh_process(tmp_path: Path) -> None:
    """A random student of every case, saved, reloads by ``structsearch.load`` alone (no teacher, no
    surgery state) in a process that never built it, and computes what it did. One process for all
    cases: each fresh process costs seconds of imports."""
    cases = []
    for i, (_, name, kwargs, size) in enumerate(CASES):
        teacher, space, _ = _setup(name, kwargs)
        spec = space.sample(random.Random(7))
        student, recipe = build_student_with_recipe(teacher, spec)
        save_student(tmp_path / f"s{i}", student.eval(), spec, recipe)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.save((x, student(x)), tmp_path / f"io{i}.pt")
        cases.append((name, str(tmp_path / f"s{i}"), str(tmp_path / f"io{i}.pt")))
    code = (
        "import sys, torch, structsearch\n"
        f"for name, saved, io in {cases!r}:\n"
        "    x, e = torch.load(io)\n"
        "    with torch.no_grad():\n"
        "        d = (structsearch.load(saved)(x) - e).abs().max().item()\n"
        "    print(name, d)\n"
        "    assert d < 1e-5, name\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(run.stdout.splitlines()) == len(CASES)


@pytest.mark.parametrize("family,name,kwargs,size", CASES, ids=CASE_IDS)
def test_spec_json_round_trip_and_hash(family: str, name: str, kwargs: dict, size: int) -> None:
    _, space, _ = _setup(name, kwargs)
    spec = space.sample(random.Random(5))
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)
    assert again.kwargs == json.loads(json.dumps(kwargs))  # the JSON form: tuples come back as lists


def test_invalid_specs_name_the_block() -> None:
    _, space, _ = _setup("cifar_resnet20", {})
    full = space.full_spec()
    with pytest.raises(SpecError, match=r"layer2\.0.*cannot be dropped"):
        space.validate(full.replace_block(1, 0, BlockSpec(keep=False)))
    with pytest.raises(SpecError, match=r"layer1\.1.*width 0\.3"):
        space.validate(full.replace_block(0, 1, BlockSpec(width=0.3)))
    with pytest.raises(SpecError, match="heads"):
        space.validate(full.replace_block(0, 1, BlockSpec(heads=2)))
    with pytest.raises(SpecError, match="stages"):
        space.validate(ArchSpec.make("cifar_resnet20", [[BlockSpec()]]))
    all_dropped = full
    for j in range(1, 3):
        all_dropped = all_dropped.replace_block(0, j, BlockSpec(keep=False))
    with pytest.raises(SpecError, match="stage 0"):
        space.validate(all_dropped.replace_block(0, 0, BlockSpec(keep=False)))
    with pytest.raises(SpecError, match="width"):
        ArchSpec.from_dict({"model": "x", "stages": [[{"keep": True, "width": 2}]]})
    with pytest.raises(SpecError, match="JSON"):
        ArchSpec.from_json("{not json")


def test_importances_are_registered_under_the_names_a_study_spec_accepts() -> None:
    from typing import get_args

    from structsearch.pruning.importance import _IMPORTANCES, L1Magnitude, get_importance
    from structsearch.search.spec import StudySpec

    assert list(_IMPORTANCES) == list(get_args(StudySpec.model_fields["importance"].annotation))
    assert isinstance(get_importance("l1"), L1Magnitude) and get_importance("random", seed=3).seed == 3
    with pytest.raises(ValueError, match="unknown importance 'l3'.*l1, random"):
        get_importance("l3")


#: feature KD pairs these families' stages by name (ViTs, Eva ones too, pair blocks by origin: test_vit_kd)
CNN_CASES = [c for c in CASES if c[0] not in ("vit", "eva", "detector")]


@pytest.mark.parametrize("family,name,kwargs,size", CNN_CASES, ids=[c[1] for c in CNN_CASES])
def test_cnn_feature_taps_pair_teacher_and_student(family: str, name: str, kwargs: dict, size: int) -> None:
    """Feature KD compares stage outputs: a random student keeps the teacher's stage names and shapes."""
    from structsearch.distill.taps import check_feature_pair, tapped

    teacher, space, _ = _setup(name, kwargs)
    student = build_student(teacher, space.sample(random.Random(3))).eval()
    names = check_feature_pair(teacher, student)
    x = torch.randn(2, 3, size, size)
    shapes = []
    for model in (teacher, student):
        with tapped(model, names) as tap, torch.no_grad():
            model(x)
            shapes.append([tuple(f.shape) for f in tap.take()])
    assert len(names) >= 3 and shapes[0] == shapes[1]


def test_input_too_small_for_the_model_is_a_cost_error() -> None:
    teacher, _, _ = _setup("convnext_atto", {"num_classes": 10})
    with pytest.raises(CostError, match=r"ConvNeXt cannot run on 3x8x8 inputs \(.*Kernel size.*larger images"):
        measure_cost(teacher, 8)
    swin = create_model("swin_tiny_patch4_window7_224", num_classes=10, embed_dim=16, depths=(1, 1), num_heads=(1, 1))
    with pytest.raises(CostError, match=r"built for 224x224 images: .* img_size=32 \(`--kw img_size=32`"):
        measure_cost(swin, 32)  # a transformer built for another size is told how to rebuild it
    levit = create_model("levit_128s", num_classes=10, img_size=64)  # attention biases sized for 64 px
    with pytest.raises(CostError, match=r"built for one input size: .* img_size=32 \(`--kw img_size=32`"):
        measure_cost(levit, 32)
    v1 = create_model("efficientformer_l1", num_classes=10, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1))
    with pytest.raises(CostError, match=r"larger images"):  # timm builds it for 224 px only, whatever img_size says
        measure_cost(v1, 64)


def test_a_grouped_conv_keeps_whole_groups_and_their_outputs() -> None:
    """Slicing keeps each kept group's filters on that group's inputs: outputs equal the teacher's."""
    from structsearch.pruning.ops import group_channels, slice_conv

    conv = torch.nn.Conv2d(12, 12, 3, padding=1, groups=4)  # 4 groups of 3 channels
    x = torch.randn(2, 12, 5, 5)
    idx = group_channels(torch.tensor([0, 2]), 3)
    full = conv(x)[:, idx]
    slice_conv(conv, out_idx=idx)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (2, 6, 6)
    torch.testing.assert_close(conv(x[:, idx]), full)
    with pytest.raises(ValueError, match="whole groups of 3 channels"):
        slice_conv(torch.nn.Conv2d(12, 12, 3, groups=4), out_idx=torch.tensor([0, 1, 3]))


@pytest.mark.parametrize(
    "name,message",
    [
        (
            "vit_small_patch16_224.dinov2",
            r"unknown pretrained tag 'dinov2' .*did you mean vit_small_patch16_224\.dino\?",
        ),
        ("cifar_resnet56.x", r"unknown pretrained tag 'x' for 'cifar_resnet56'; it has none: use 'cifar_resnet56'"),
    ],
)
def test_a_pretrained_tag_timm_does_not_know_is_an_unknown_model(name: str, message: str) -> None:
    """``timm.is_model`` ignores tags; timm's own error would come from deep inside ``create_model``."""
    with pytest.raises(UnknownModelError, match=message):
        check_model_name(name)


def test_no_adapter_names_the_part_a_family_cannot_narrow() -> None:
    """A model of a kind a family knows (a ResNet) built with a layer it cannot slice (GroupNorm)."""
    with pytest.raises(
        NoAdapterError, match=r"resnet family cannot narrow or drop layer1\.0 \(Bottleneck with GroupNorm\)"
    ):
        family_for(create_model("resnet50_gn", num_classes=10))


@pytest.mark.parametrize(
    "name,part,refused",
    [
        ("convnext_atto", "stages.1.blocks.0", "stages.1.blocks.0 (Custom with a Mlp)"),
        ("repvit_m0_9", "stages.2.downsample", "stages.2.downsample (Custom)"),
        ("levit_128s", "stages.1.blocks.0", "stages.1.blocks.0 (Custom)"),
        ("tiny_vit_5m_224", "stages.0.blocks.1", "stages.0.blocks.1 (Custom)"),
        ("efficientformer_l1", "stages.3.blocks.3", "stages.3.blocks.3 (Custom)"),  # after Flat: its own index
        ("swinv2_tiny_window8_256", "layers.1.blocks.1", "layers.1.blocks.1 (Custom)"),
        ("edgenext_xx_small", "stages.2.blocks.5", "stages.2.blocks.5 (Custom)"),  # split-transpose
        ("fastvit_sa12", "stages.3.blocks.1", "stages.3.blocks.1 (Custom)"),  # attention
        ("mobilevit_xxs", "stages.3.1.transformer.2", "stages.3.1.transformer.2 (Custom)"),  # not staged
        ("mobilevitv2_050", "stages.1.1", "stages.1.1 (Custom)"),
        ("efficientvit_b0", "stages.2.blocks.1.context_module.main", "stages.2.blocks.1 (EfficientVitBlock)"),
        ("efficientformerv2_s0", "stages.2.blocks.2.token_mixer", "stages.2.blocks.2 (EfficientFormerV2Block)"),
        ("swin_tiny_patch4_window7_224", "layers.2", "layers.2 (Custom)"),
        ("caformer_s18", "stages.2.blocks.1.token_mixer", "stages.2.blocks.1 (MetaFormerBlock with a Custom)"),
        ("poolformer_s12", "stages.0.blocks.1", "stages.0.blocks.1 (Custom with a Pooling)"),
        ("inception_next_atto", "stages.1.blocks.0.mlp", "stages.1.blocks.0 (MetaNeXtBlock)"),
        ("starnet_s050", "stages.2.2", "stages.2.2 (Custom)"),  # index 0 is the stage's downsampler
        ("starnet_s050", "stages.1", "stages.1 (Custom)"),
        ("pvt_v2_b0", "stages.3.blocks.1.attn", "stages.3.blocks.1 (Block)"),
        ("efficientvit_m0", "stages.2.blocks.1.ffn1.m", "stages.2.blocks.1 (EfficientVitBlock)"),
        ("mambaout_femto", "stages.2.blocks.1", "stages.2.blocks.1 (Custom)"),
        ("hgnetv2_b0", "stages.2.blocks.1.layers.1", "stages.2.blocks.1 (HighPerfGpuBlock)"),
        ("cspresnet50", "stages.1.blocks.2.conv2", "stages.1.blocks.2 (BottleneckBlock)"),
        ("resnetv2_50", "stages.1.blocks.1", "stages.1.blocks.1 (Custom)"),
        ("rexnet_100", "features.3.se", "features.3 (LinearBottleneck)"),
        ("vit_small_patch16_dinov3", "blocks.1", "blocks.1 (Custom of EvaAttention, Mlp)"),
    ],
)
def test_a_model_with_a_part_of_its_own_is_refused_naming_it(name: str, part: str, refused: str) -> None:
    """A subclass of a timm block or stage may compute something else: every family refuses it, naming
    the module by its path in the model (the staged families through their one walk, ``StagedFamily``)."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == name))
    model = copy.deepcopy(_setup(name, kwargs)[0])
    module = model.get_submodule(part)
    module.__class__ = type("Custom", (type(module),), {})
    with pytest.raises(NoAdapterError, match=rf"cannot narrow or drop {re.escape(refused)}"):
        family_for(model)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_narrowed_ghost_module_keeps_its_pairs_outputs(version: str) -> None:
    """GhostNet keeps a primary channel with its cheap copy: the narrowed block's ghost module (and, in a
    stride-2 block, its depthwise conv) computes exactly the teacher's kept channels, V2's gate included."""
    torch.manual_seed(0)
    teacher = create_model("ghostnet_050", num_classes=10, version=version).eval()
    space = space_of(teacher, "ghostnet_050", {"num_classes": 10, "version": version})
    assert type(teacher.blocks[3][0].ghost1).__name__ == ("GhostModule" if version == "v1" else "GhostModuleV2")
    i, j = _position(space, "blocks.3.0")
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    mid = torch.tensor(recipe["blocks"]["blocks.3.0"]["channels"])
    half = space.stages[i][j].width_base // 2
    assert len(mid) == half and torch.equal(mid[: half // 2] + half, mid[half // 2 :])  # whole pairs

    def outputs(model: torch.nn.Module) -> list[torch.Tensor]:
        block, seen = model.blocks[3][0], []
        hooks = [m.register_forward_hook(lambda *a: seen.append(a[2])) for m in (block.ghost1, block.bn_dw)]
        with torch.no_grad():
            model.eval()(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        for h in hooks:
            h.remove()
        return seen

    for got, want in zip(outputs(student), outputs(teacher), strict=True):
        torch.testing.assert_close(got, want[:, mid])


def test_ghostnet_v3_is_refused_naming_its_block() -> None:
    with pytest.raises(
        NoAdapterError, match=r"ghostnet family cannot narrow or drop blocks\.0\.0 \(GhostBottleneckV3\)"
    ):
        family_for(create_model("ghostnetv3_050", num_classes=10))


def test_a_narrowed_repvit_downsample_keeps_the_same_fraction_of_both_mlps() -> None:
    """A RepViT downsample holds two channel-mixer MLPs of different widths (its input's and its output's):
    both keep the spec's fraction, and each kept hidden channel computes what the teacher's did."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == "repvit_m0_9"))
    teacher, space, _ = _setup("repvit_m0_9", kwargs)
    i, j = _position(space, "stages.2.downsample")
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    entry = recipe["blocks"]["stages.2.downsample"]
    down = teacher.stages[2].downsample
    ffn_idx, pre_idx = torch.tensor(entry["channels"]), torch.tensor(entry["pre_block_channels"])
    assert len(ffn_idx) * 2 == down.ffn.conv1.c.out_channels
    assert len(pre_idx) * 2 == down.pre_block.channel_mixer.conv1.c.out_channels

    def hidden(model: torch.nn.Module) -> list[torch.Tensor]:
        d, seen = model.stages[2].downsample, []
        mods = (d.pre_block.channel_mixer.conv1, d.ffn.conv1)
        hooks = [m.register_forward_hook(lambda *a: seen.append(a[2])) for m in mods]
        with torch.no_grad():
            model.eval()(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        for h in hooks:
            h.remove()
        return seen

    (pre_s, ffn_s), (pre_t, _) = hidden(student), hidden(teacher)
    torch.testing.assert_close(pre_s, pre_t[:, pre_idx])  # before the narrowed block, inputs agree exactly
    assert ffn_s.shape[1] == len(ffn_idx)


def test_a_swin_block_keeps_its_heads_outputs_with_their_position_biases() -> None:
    """A shifted-window block cut to one of its two heads: the kept head's attention output (the input
    of ``proj``) equals the teacher's, so its relative position biases and the shift mask followed it."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == "swin_tiny_patch4_window7_224"))
    cached, space, _ = _setup("swin_tiny_patch4_window7_224", kwargs)
    teacher = copy.deepcopy(cached)
    t_block = teacher.layers[0].blocks[1]
    assert t_block.shift_size == (2, 2) and t_block.attn_mask is not None  # the shifted block of stage 0
    with torch.no_grad():  # biases differ per head, and the second head ranks first
        t_block.attn.relative_position_bias_table.normal_(std=1.0, generator=torch.Generator().manual_seed(1))
        t_block.attn.qkv.weight.view(3, 2, 16, -1)[:, 1] *= 3
    spec = space.full_spec().replace_block(0, 1, BlockSpec(True, 1.0, heads=1))
    student, recipe = build_student_with_recipe(teacher, spec)
    assert recipe["blocks"]["layers.0.blocks.1"]["heads"] == [head := 1]
    s_attn = student.layers[0].blocks[1].attn
    assert s_attn.num_heads == 1 and s_attn.relative_position_bias_table.shape[1] == 1

    def proj_input(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = attn.proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        with torch.no_grad():
            attn(x, mask=t_block.attn_mask)
        hook.remove()
        return seen[0]

    x = torch.randn(2 * t_block.attn_mask.shape[0], 16, 32, generator=torch.Generator().manual_seed(0))
    head_dim = 32 // 2
    torch.testing.assert_close(
        proj_input(s_attn, x), proj_input(t_block.attn, x)[..., head * head_dim : (head + 1) * head_dim]
    )


@pytest.mark.parametrize(
    "name,block,attn_name,tokens",
    [
        ("tiny_vit_5m_224", "stages.1.blocks.0", "attn", 16),
        ("efficientformer_l1", "stages.3.blocks.3", "token_mixer", 49),
        ("levit_128s", "stages.0.blocks.1", "attn", 16),  # qkv is a Linear and a BatchNorm
    ],
)
def test_a_levit_style_attention_keeps_its_heads_outputs_with_their_biases(
    name: str, block: str, attn_name: str, tokens: int
) -> None:
    """LeViT, TinyViT and EfficientFormer lay ``qkv`` out per head (q, k, v of head 0, then head 1, ...),
    unlike ViT: a block cut to one head computes that head's attention output (``proj``'s input)
    exactly, with its row of ``attention_biases`` -- not the teacher's biases cached by an earlier
    forward in eval mode."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == name))
    cached, space, _ = _setup(name, kwargs)
    teacher = copy.deepcopy(cached)
    t_attn = teacher.get_submodule(f"{block}.{attn_name}")
    qkv = getattr(t_attn.qkv, "linear", t_attn.qkv)  # LeViT's LinearNorm or a Linear
    heads, dim = t_attn.num_heads, qkv.in_features
    with torch.no_grad():  # biases differ per head, and the second head ranks first
        t_attn.attention_biases.normal_(std=1.0, generator=torch.Generator().manual_seed(1))
        qkv.weight.view(heads, -1, dim)[1] *= 3
        teacher.eval()(torch.randn(1, 3, _size(name), _size(name)))  # caches the biases of every head
    i, j = _position(space, block)
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 1.0, 1)))
    assert recipe["blocks"][block]["heads"] == [1]
    s_attn = student.get_submodule(f"{block}.{attn_name}")

    def proj_input(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = attn.proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        with torch.no_grad():
            attn(x)
        hook.remove()
        return seen[0]

    x = torch.randn(3, tokens, dim, generator=torch.Generator().manual_seed(0))  # e.g. 3 windows of 4x4 tokens
    assert s_attn.num_heads == 1 and s_attn.attention_biases.shape[0] == 1
    assert not s_attn.training  # (a mode change would clear the cache; their Attention.train returns None)
    val = t_attn.val_dim
    torch.testing.assert_close(proj_input(s_attn, x), proj_input(t_attn, x)[..., val : 2 * val])


def test_a_fastvit_student_reparameterises_for_deployment() -> None:
    """FastViT is deployed re-parameterised (each RepMixer and large-kernel branch fused into one conv):
    a narrowed, shallower student fuses like its teacher and computes the same outputs fused."""
    from timm.utils.model import reparameterize_model

    kwargs = dict(next(c[2] for c in CASES if c[1] == "fastvit_sa12"))
    teacher, space, _ = _setup("fastvit_sa12", kwargs)
    student = build_student(teacher, space.sample(random.Random(1))).eval()
    assert sum(b.keep for s in space.sample(random.Random(1)).stages for b in s) < space.num_blocks
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unfused = student(x)
        fused = reparameterize_model(student)
        assert fused.stages[0].blocks[0].token_mixer.reparam_conv is not None
        torch.testing.assert_close(fused(x), unfused, atol=1e-5, rtol=1e-4)


def test_a_mobilenetv4_conv_stage_narrows_the_channels_between_its_two_convs() -> None:
    """MobileNetV4's first stages are two ``ConvBnAct`` (3x3 stride 2, then 1x1): a fused inverted
    residual written as two blocks. The second one's width is the channels between them: the first's
    kept outputs are exactly the teacher's, and the stage's output keeps the teacher's width."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == "mobilenetv4_conv_small"))
    teacher, space, _ = _setup("mobilenetv4_conv_small", kwargs)
    i, j = _position(space, "blocks.1.1")
    assert space.stages[i][j - 1].widths == (1.0,)  # the first takes the previous stage's output as it is
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    kept = torch.tensor(recipe["blocks"]["blocks.1.1"]["channels"])
    assert len(kept) == space.stages[i][j].width_base // 2

    def outputs(model: torch.nn.Module) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda *a: seen.append(a[2])) for m in (model.blocks[1][0], model.blocks[1])]
        with torch.no_grad():
            model.eval()(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        for h in hooks:
            h.remove()
        return seen

    (s_mid, s_out), (t_mid, t_out) = outputs(student), outputs(teacher)
    torch.testing.assert_close(s_mid, t_mid[:, kept])
    assert s_out.shape == t_out.shape


def test_a_mobilenetv4_hybrid_attention_keeps_its_query_heads_outputs() -> None:
    """MobileNetV4's multi-query attention shares one key and value among its query heads: a block cut
    to one head computes that head's output (the output projection's input) exactly, and the cost
    model stays exact with heads searched."""
    from structsearch.search.costmodel import CostModel

    torch.manual_seed(0)
    kwargs = {"num_classes": 10}
    teacher = create_model("mobilenetv4_hybrid_medium", **kwargs).eval()
    space = space_of(teacher, "mobilenetv4_hybrid_medium", kwargs)
    i, j = next((i, j) for i, s in enumerate(space.stages) for j, c in enumerate(s) if c.heads_base)
    name = space.stages[i][j].name
    t_attn = teacher.get_submodule(f"{name}.attn")
    n, key_dim = t_attn.num_heads, t_attn.key_dim
    with torch.no_grad():  # the second head ranks first
        t_attn.query.proj.weight.view(n, key_dim, -1)[1] *= 3
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 1.0, 1)))
    assert recipe["blocks"][name]["heads"] == [1]
    s_attn = student.get_submodule(f"{name}.attn")

    def output_input(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = attn.output.proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        with torch.no_grad():
            attn(x)
        hook.remove()
        return seen[0]

    x = torch.randn(2, t_attn.query.proj.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    value_dim = t_attn.value_dim
    assert s_attn.num_heads == 1
    torch.testing.assert_close(output_input(s_attn, x), output_input(t_attn, x)[:, value_dim : 2 * value_dim])
    model = CostModel.calibrate(teacher, space, 64)
    for spec in [space.smallest_spec(), space.sample(random.Random(0))]:
        measured = measure_cost(build_student(teacher, spec), 64)
        assert (model.macs(spec), model.params(spec)) == (measured.macs, measured.params)


def test_a_narrowed_star_block_keeps_its_channels_products() -> None:
    """A StarNet block multiplies ``act(f1(y))`` and ``f2(y)`` channel by channel: the narrowed block keeps
    the same channels of both, so it computes the teacher's block with the dropped channels' columns of
    ``g`` zeroed, exactly; its stage keeps the downsampler at index 0."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == "starnet_s050"))
    teacher, space, _ = _setup("starnet_s050", kwargs)
    teacher = copy.deepcopy(teacher).eval()
    i, j = _position(space, "stages.2.2")
    spec = space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)).replace_block(i, j + 1, BlockSpec(False, 1.0))
    student, recipe = build_student_with_recipe(teacher, spec)
    student.eval()
    kept = torch.tensor(recipe["blocks"]["stages.2.2"]["channels"])
    assert len(kept) == space.stages[i][j].width_base // 2 and recipe["blocks"]["stages.2.3"] == {"keep": False}
    assert [type(m).__name__ for m in student.stages[2]] == ["ConvBN", "Block", "Block"]  # 1 dropped of 3
    reference = copy.deepcopy(teacher.stages[2][2])
    dropped = torch.ones(reference.g.conv.in_channels, dtype=torch.bool)
    dropped[kept] = False
    with torch.no_grad():
        reference.g.conv.weight[:, dropped] = 0
        x = torch.randn(2, reference.f1.conv.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(student.stages[2][2](x), reference(x))


@pytest.mark.parametrize("kind", ["swiglu", "glu", "glu_gate_last"])
def test_a_narrowed_gated_mlp_keeps_each_units_value_and_gate(kind: str) -> None:
    """Each hidden unit of a gated MLP is a value times a gate (SwiGLU: two layers; GluMlp: two halves
    of one): the narrowed MLP keeps both rows of every kept unit, so it computes the teacher's MLP
    with the dropped units' columns of ``fc2`` zeroed, exactly."""
    from timm.layers import GluMlp, SwiGLU

    from structsearch.pruning.importance import L1Magnitude
    from structsearch.pruning.mlp import gated_width, shrink_gated, sliceable_gated

    torch.manual_seed(0)
    if kind == "swiglu":
        teacher: torch.nn.Module = SwiGLU(24, 64)
    else:  # GluMlp's hidden_features counts both halves
        teacher = GluMlp(24, 128, act_layer=torch.nn.SiLU, gate_last=kind == "glu_gate_last")
    assert sliceable_gated(teacher) and gated_width(teacher) == 64
    student = copy.deepcopy(teacher)
    kept = torch.tensor(shrink_gated(student, 24, L1Magnitude()))
    assert len(kept) == 24 and gated_width(student) == 24
    dropped = torch.ones(64, dtype=torch.bool)
    dropped[kept] = False
    x = torch.randn(3, 5, 24)
    with torch.no_grad():
        teacher.fc2.weight[:, dropped] = 0
        torch.testing.assert_close(student(x), teacher(x))


def test_an_eva_student_exports_to_onnx(tmp_path: Path) -> None:
    """torch.onnx's TorchScript exporter cannot trace timm's Eva attention; ``export --onnx`` (and
    onnxruntime latency) fall back to the dynamo exporter, whose graph onnxruntime runs at any batch
    size with the student's outputs."""
    ort = pytest.importorskip("onnxruntime")
    from structsearch.search.export import export_onnx

    kwargs = dict(next(c[2] for c in CASES if c[1] == "vit_small_patch16_dinov3"))
    teacher, space, _ = _setup("vit_small_patch16_dinov3", kwargs)
    student = build_student(teacher, space.sample(random.Random(2))).eval()
    path = export_onnx(student, (3, 64, 64), tmp_path / "student.onnx")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        torch.testing.assert_close(
            torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), student(x), atol=1e-4, rtol=1e-4
        )


def test_a_narrowed_gated_cnn_block_keeps_its_units_and_their_conv_share() -> None:
    """MambaOut's gated CNN block: a kept hidden unit keeps its gate row, value row, ``fc2`` column and,
    for the conv part, its depthwise filter; the identity and conv parts keep the teacher's proportion.
    The narrowed block is exactly the teacher's with the dropped units' ``fc2`` columns zeroed."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == "mambaout_femto"))
    teacher, space, _ = _setup("mambaout_femto", kwargs)
    teacher = copy.deepcopy(teacher).eval()
    i, j = _position(space, "stages.0.blocks.1")
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    t_block, s_block = teacher.stages[0].blocks[1], student.eval().stages[0].blocks[1]
    hidden, ident, conv = t_block.split_indices
    assert (hidden, ident, conv) == (128, 80, 48) and s_block.split_indices == (64, 40, 24)
    kept = torch.tensor(recipe["blocks"]["stages.0.blocks.1"]["channels"])
    assert len(kept) == 64 and int((kept >= ident).sum()) == 24 == s_block.conv.out_channels
    dropped = torch.ones(hidden, dtype=torch.bool)
    dropped[kept] = False
    with torch.no_grad():
        t_block.fc2.weight[:, dropped] = 0
        x = torch.randn(2, 4, 4, 48, generator=torch.Generator().manual_seed(0))  # channels-last
        torch.testing.assert_close(s_block(x), t_block(x))


@pytest.mark.parametrize("name", ["stages.1.blocks.0", "stages.2.blocks.1"])  # 3x3 convs; 1x1 + depthwise ("light")
def test_a_narrowed_hgnet_chain_is_the_teachers_with_the_dropped_channels_unread(name: str) -> None:
    """A PP-HGNet block's layers each keep the same number of output channels; the next layer and the
    aggregation read only those. The narrowed block is exactly the teacher's with its consumers'
    columns for the dropped channels zeroed."""
    from structsearch.space.hgnet import _aggregation, _entry

    kwargs = dict(next(c[2] for c in CASES if c[1] == "hgnetv2_b0"))
    teacher, space, _ = _setup("hgnetv2_b0", kwargs)
    teacher = copy.deepcopy(teacher).eval()
    i, j = _position(space, name)
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    t_block, s_block = teacher.get_submodule(name), student.eval().get_submodule(name)
    entry = recipe["blocks"][name]
    layers = list(t_block.layers)
    stream, mid = _entry(layers[0]).in_channels, space.stages[i][j].width_base
    kept = [entry["channels"], *(entry[f"layers.{n}"] for n in range(1, len(layers)))]
    assert (
        all(len(k) == mid // 2 for k in kept) and _aggregation(s_block).in_channels == stream + len(layers) * mid // 2
    )
    with torch.no_grad():
        for n, channels in enumerate(kept):
            dropped = torch.ones(mid, dtype=torch.bool)
            dropped[channels] = False
            _aggregation(t_block).weight[:, stream + n * mid : stream + (n + 1) * mid][:, dropped] = 0
            if n + 1 < len(layers):
                _entry(layers[n + 1]).weight[:, dropped] = 0
        x = torch.randn(2, stream, 4, 4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s_block(x), t_block(x))


def test_a_narrowed_se_dark_block_is_the_teachers_with_the_dropped_channels_unread() -> None:
    """A cs3se dark block squeezes and excites its middle channels: the narrowed block keeps the
    excitation of every kept channel (the squeeze reads only kept ones), so it is exactly the teacher's
    with the dropped channels' inputs of ``conv2`` and of the squeeze zeroed."""
    torch.manual_seed(0)
    teacher = create_model("cs3sedarknet_l", num_classes=10).eval()
    space = space_of(teacher, "cs3sedarknet_l", {"num_classes": 10})
    i, j = _position(space, "stages.0.blocks.0")
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    t_block, s_block = teacher.stages[0].blocks[0], student.eval().stages[0].blocks[0]
    assert type(t_block.attn).__name__ == "SEModule" and s_block.attn.fc1.in_channels == 32
    dropped = torch.ones(64, dtype=torch.bool)
    dropped[recipe["blocks"]["stages.0.blocks.0"]["channels"]] = False
    with torch.no_grad():
        t_block.conv2.conv.weight[:, dropped] = 0
        t_block.attn.fc1.weight[:, dropped] = 0
        x = torch.randn(2, t_block.conv1.conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s_block(x), t_block(x))


def test_a_groupnorm_block_keeps_whole_groups_exactly() -> None:
    """A pre-activation ResNet with GroupNorms (resnetv2_50d_gn; BiT's layout without its weight
    standardisation) narrows by whole groups: each kept group normalises over the same channels as in
    the teacher, so the narrowed block is the teacher's with the dropped channels' inputs zeroed.
    A GroupNorm asked to keep part of a group refuses."""
    from structsearch.pruning.ops import slice_norm

    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "layers": (1, 2, 1, 1)}
    teacher = create_model("resnetv2_50d_gn", **kwargs).eval()
    space = space_of(teacher, "resnetv2_50d_gn", kwargs)
    i, j = _position(space, "stages.1.blocks.1")
    choices = space.stages[i][j]
    assert choices.unit == 128 // 32 and all(round(w * 32) == w * 32 for w in choices.widths)
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    t_block, s_block = teacher.stages[1].blocks[1], student.eval().stages[1].blocks[1]
    assert s_block.norm2.num_groups == s_block.norm3.num_groups == 16
    entry = recipe["blocks"]["stages.1.blocks.1"]
    with torch.no_grad():
        for kept, consumer in ((entry["channels"], t_block.conv2), (entry["conv2"], t_block.conv3)):
            dropped = torch.ones(128, dtype=torch.bool)
            dropped[kept] = False
            consumer.weight[:, dropped] = 0
        x = torch.randn(2, 512, 4, 4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s_block(x), t_block(x))
    with pytest.raises(ValueError, match="keeps whole groups"):
        slice_norm(torch.nn.GroupNorm(4, 16), torch.tensor([0, 1, 2, 5]))


def test_a_narrowed_rexnet_bottleneck_keeps_its_partial_residual() -> None:
    """A ReXNet bottleneck widens the network and adds its input to its first outputs: narrowing its
    expansion keeps both widths, and the block is exactly the teacher's with the dropped expansion
    channels unread (``conv_pwl``'s and the squeeze's columns zeroed)."""
    kwargs = dict(next(c[2] for c in CASES if c[1] == "rexnet_100"))
    teacher, space, _ = _setup("rexnet_100", kwargs)
    teacher = copy.deepcopy(teacher).eval()
    i, j = _position(space, "features.6")
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    t_block, s_block = teacher.features[6], student.eval().features[6]
    assert t_block.use_shortcut and type(t_block.se).__name__ == "SEModule"
    assert (s_block.in_channels, s_block.out_channels) == (t_block.in_channels, t_block.out_channels)
    width = t_block.conv_dw.conv.out_channels
    dropped = torch.ones(width, dtype=torch.bool)
    dropped[recipe["blocks"]["features.6"]["channels"]] = False
    assert int((~dropped).sum()) == width // 2 == s_block.conv_dw.conv.out_channels
    with torch.no_grad():
        t_block.conv_pwl.conv.weight[:, dropped] = 0
        t_block.se.fc1.weight[:, dropped] = 0
        x = torch.randn(2, t_block.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s_block(x), t_block(x))


def test_a_cspresnext_bottleneck_keeps_whole_groups_on_both_sides() -> None:
    """CSPResNeXt's grouped ``conv2`` reads group g's inputs for group g's outputs: a narrowed bottleneck
    keeps the same whole groups on both sides, is exactly the teacher's with the dropped groups unread
    by ``conv3``, and the search's cost model stays exact."""
    from structsearch.search.costmodel import CostModel

    torch.manual_seed(0)
    teacher = create_model("cspresnext50", num_classes=10).eval()
    space = space_of(teacher, "cspresnext50", {"num_classes": 10})
    i, j = _position(space, "stages.1.blocks.1")
    assert space.stages[i][j].unit == 8 and space.stages[i][j].width_base == 256
    student, recipe = build_student_with_recipe(teacher, space.full_spec().replace_block(i, j, BlockSpec(True, 0.5)))
    t_block, s_block = teacher.stages[1].blocks[1], student.eval().stages[1].blocks[1]
    assert s_block.conv2.conv.groups == 16 and s_block.conv1.conv.out_channels == 128
    dropped = torch.ones(256, dtype=torch.bool)
    dropped[recipe["blocks"]["stages.1.blocks.1"]["channels"]] = False
    with torch.no_grad():
        t_block.conv3.conv.weight[:, dropped] = 0
        x = torch.randn(2, t_block.conv1.conv.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s_block(x), t_block(x))
    model = CostModel.calibrate(teacher, space, 32)
    for spec in [space.smallest_spec(), space.sample(random.Random(0))]:
        measured = measure_cost(build_student(teacher, spec), 32)
        assert (model.macs(spec), model.params(spec)) == (measured.macs, measured.params)
