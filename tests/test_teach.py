"""``structsearch teach``: a resumed run equals an uninterrupted one, and the shipped file is what was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from structsearch.cli import app
from structsearch.data import Preprocess, load_data
from structsearch.distill import TeacherCache
from structsearch.distill.evaluate import top1
from structsearch.errors import TeachError
from structsearch.models import create_model, load_checkpoint
from structsearch.teach import TeachRecipe, load_recipe, teach
from tests.cli_helpers import runner

TINY = dict(img_size=8, patch_size=2, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)


def _recipe(tmp_path: Path, **over: object) -> TeachRecipe:
    source = tmp_path / "resnet20.pt"
    if not source.exists():  # the model distilled from: any trained-or-not checkpoint does for the mechanics
        torch.save(create_model("cifar_resnet20", seed=1).state_dict(), source)
    fields = dict(
        name="tiny",
        model="cifar_vit",
        kwargs=TINY,
        distill_from={"model": "cifar_resnet20", "checkpoint": str(source)},
        data={"train": "digits[:512]", "val": "digits:test[:150]", "test": "digits:test[150:]"},
        epochs=2,
        batch_size=64,
        lr=0.003,
        crop_padding=1,
        hflip=False,
        checkpoint_every=3,
    )
    return TeachRecipe.model_validate({**fields, **over})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def test_a_resumed_run_exports_the_same_weights_as_an_uninterrupted_one(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, kwargs={**TINY, "drop_path_rate": 0.1})  # drop-path draws from the RNG
    straight = teach(recipe, tmp_path / "a", tmp_path / "a.safetensors")
    assert straight.finished and straight.step == 16 and len(straight.history) == 2
    stopped = teach(recipe, tmp_path / "b", tmp_path / "b.safetensors", hours=0)  # out of time after step 1
    assert not stopped.finished and stopped.step == 1 and not (tmp_path / "b.safetensors").exists()
    resumed = teach(recipe, tmp_path / "b", tmp_path / "b.safetensors")
    assert resumed.finished
    # the speed of a resumed run counts the images of every invocation over their summed seconds
    assert resumed.images_per_s * resumed.train_seconds == pytest.approx(16 * 64)
    a, b = _weights(tmp_path / "a.safetensors"), _weights(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def curve(h: tuple) -> list:
        return [(e["step"], e["val_top1"]) for e in h]

    assert curve(resumed.history) == curve(straight.history)


def test_the_exported_teacher_reproduces_its_sidecar_accuracy(tmp_path: Path) -> None:
    out = tmp_path / "teachers" / "tiny.safetensors"
    recipe = _recipe(tmp_path, epochs=3)
    result = teach(recipe, tmp_path / "work", out, command="structsearch teach x.yaml")
    assert all(v.dtype == torch.float16 for v in _weights(out).values())
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["command"] == "structsearch teach x.yaml" and side["seed"] == 0 and side["model"] == "cifar_vit"
    net = create_model("cifar_vit", **TINY)
    load_checkpoint(net, out)  # safetensors through the one checkpoint loader
    test = load_data("digits:test[150:]")
    acc = top1(net, test.x, test.y, Preprocess.from_model(net), 256, torch.device("cpu"))
    assert acc == result.test_top1 and round(acc, 2) == side["test"]["top1"]
    assert side["val"]["top1"] == round(result.val_top1, 2) and len(side["history"]) == 3


def test_input_size_sets_the_resolution_of_training_and_of_the_shipped_accuracy(tmp_path: Path) -> None:
    """A timm model defaults to its ImageNet size (224 px): ``input_size`` trains it at the size asked for."""
    kwargs = {"num_classes": 10, "dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}
    recipe = _recipe(tmp_path, model="convnext_atto", kwargs=kwargs, input_size=32, epochs=1)
    events: list[dict] = []
    out = tmp_path / "convnext.safetensors"
    result = teach(recipe, tmp_path / "work", out, log=events.append)
    assert events[0] == {"event": "start", "model": "convnext_atto", "input_size": "32x32", "steps": 8}
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["input_size"] == [32, 32] and side["recipe"]["input_size"] == 32
    net = create_model("convnext_atto", **kwargs)
    load_checkpoint(net, out)
    assert Preprocess.from_model(net).input_size == (224, 224)  # what it would have trained at
    test = load_data("digits:test[150:]")
    assert top1(net, test.x, test.y, Preprocess.from_model(net, 32), 256, torch.device("cpu")) == result.test_top1
    # `structsearch eval` on the file runs it at that size too, and reproduces the accuracy
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "convnext_atto",
            "--checkpoint",
            str(out),
            "--data",
            "digits:test[150:]",
            "--kw",
            "num_classes=10",
            "--kw",
            "dims=[8,16,32,64]",
            "--kw",
            "depths=[1,1,1,1]",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["input_size"] == [32, 32] and shown["top1"] == round(result.test_top1, 2)
    # a study naming the exported file searches at the size it was trained at, unless data.input_size says otherwise
    from structsearch.search import parse_study_spec
    from structsearch.search.context import plan_search

    study: dict = {
        "name": "t",
        "teacher": {"model": "convnext_atto", "kwargs": kwargs, "checkpoint": str(out)},
        "budget": {"flops": "60%"},
    }
    assert plan_search(parse_study_spec(study, "test")).input_size == (3, 32, 32)
    study["data"] = {"input_size": 64}
    assert plan_search(parse_study_spec(study, "test")).input_size == (3, 64, 64)


def test_cached_teacher_views_train_and_are_reused(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path / "cache")
    recipe = _recipe(tmp_path, teacher_views=2, epochs=1)
    teach(recipe, tmp_path / "w1", None, cache=cache)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1
    teach(recipe, tmp_path / "w2", None, cache=cache)
    assert list((tmp_path / "cache").iterdir()) == entries


def test_a_bad_recipe_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nmodel: cifar_vit\ndata: {train: digits, val: digits:test, test: digits:test}\nepochs: 1\n")
    with pytest.raises(TeachError, match="distill_from"):
        load_recipe(bad)
    assert load_recipe(Path("studies/teach_vit_cifar10.yaml")).model == "cifar_vit"


def test_bf16_autocast_changes_the_arithmetic_not_the_weights_kept(tmp_path: Path) -> None:
    runs = {
        p: teach(_recipe(tmp_path, precision=p, epochs=1), tmp_path / p, tmp_path / f"{p}.safetensors")
        for p in ("fp32", "bf16")
    }
    assert all(r.finished for r in runs.values())
    a, b = _weights(tmp_path / "fp32.safetensors"), _weights(tmp_path / "bf16.safetensors")
    # the same steps in bfloat16 arithmetic end elsewhere ...
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(v.float()).all() for v in b.values())
    # ... while the weights and AdamW's state stay float32 (the checkpoint resumes either way)
    state = torch.load(tmp_path / "bf16" / "checkpoint.pt", weights_only=False)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    moments = [v for s in state["optimizer"]["state"].values() for k, v in s.items() if k.startswith("exp_avg")]
    assert moments and all(v.dtype == torch.float32 for v in moments)


def test_bf16_runs_the_teachers_batch_forward_in_bfloat16_and_hands_back_float32_logits(tmp_path: Path) -> None:
    from structsearch.teach.run import _Stream

    logits = {}
    for p in ("fp32", "bf16"):
        recipe = _recipe(tmp_path, precision=p)
        data = load_data(recipe.data.train)
        model = create_model(recipe.model, seed=0, **recipe.kwargs)
        stream = _Stream(recipe, data, Preprocess.from_model(model), torch.device("cpu"), None)
        _x, _y, logits[p] = stream.batch(0, torch.arange(32))
    assert logits["bf16"] is not None and logits["fp32"] is not None
    assert logits["bf16"].dtype == torch.float32
    assert not torch.equal(logits["bf16"], logits["fp32"])  # the arithmetic was bfloat16 ...
    # ... and the logits are float32's up to bfloat16's rounding
    scale = logits["fp32"].abs().max().item()
    assert scale > 0 and (logits["bf16"] - logits["fp32"]).abs().max().item() < 0.05 * scale


@pytest.mark.parametrize("family", ["convnext", "regnet"])
def test_a_cnn_recipe_writes_the_teacher_its_study_names(family: str) -> None:
    """``structsearch teach studies/teach_<family>_cifar10.yaml`` then ``search studies/cifar10_<family>.yaml``."""
    from structsearch.search import load_study_spec

    recipe = load_recipe(Path(f"studies/teach_{family}_cifar10.yaml"))
    study = load_study_spec(f"studies/cifar10_{family}.yaml")
    assert study.teacher.checkpoint == f"teachers/{recipe.name}.safetensors"  # teach's default --out
    assert (study.teacher.model, study.teacher.kwargs) == (recipe.model, recipe.kwargs)
    assert recipe.input_size == 32 and study.data.input_size is None  # the study reads 32 from the sidecar
