"""Fine-tuning a chosen trial to completion (``structsearch finetune``), on a tiny real study.

The study is real (digits, a cifar_resnet20 teacher trained for a few epochs at 8 px, a real
SQLite Optuna storage), every run trains for real on the CPU; nothing is mocked. Interruptions are
real exceptions raised from inside the training loop (the progress callback), so resuming starts
from whatever checkpoint was on disk at that moment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

import structsearch
from structsearch.cli import app
from structsearch.data import load_data
from structsearch.distill.trainer import INHERITED_LR, SCRATCH_LR
from structsearch.errors import CheckpointError, NotFound, StructsearchError
from structsearch.finetune import (
    CHECKPOINT_FILE,
    RESULT_FILE,
    FinetuneConfig,
    FinetuneError,
    FinetuneResult,
    ProgressEvent,
    finetune_trial,
)
from structsearch.finetune.config import ADAMW_LR
from structsearch.search import parse_study_spec, run_search, study_records
from tests.cli_helpers import one_line_error, runner

STUDY = {
    "name": "ft-tiny",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 6},
    "data": {"train": "digits", "val_size": 0.2, "input_size": 8, "hflip": False},
    "budget": {"flops": "40%"},
    "trials": 6,
    "proxy": {"steps": 4, "batch_size": 32},
}
#: Small and fast: ~18 steps per epoch over the 1,150 training rows of digits.
FAST = dict(batch_size=64, device="cpu", report_every=1, lr=0.05, downstream_hflip=False)


class Interrupt(Exception):
    """Raised from the progress callback: the run dies mid-epoch like a killed process would."""


@pytest.fixture(scope="module")
def study(home: Path) -> optuna.Study:
    return run_search(parse_study_spec(STUDY))


@pytest.fixture(scope="module")
def trained(study: optuna.Study) -> list[int]:
    """Trained trials, smallest first (cheapest to fine-tune)."""
    recs = sorted((r for r in study_records(study) if r.trained), key=lambda r: r.macs)
    assert len(recs) >= 2, "the tiny study needs two trained trials"
    return [r.trial for r in recs]


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real downstream dataset with another class count: digits 0-4 only, 8x8 grayscale."""
    d = load_data("digits")
    keep = d.y < 5
    path = tmp_path_factory.mktemp("ds") / "digits5.npz"
    np.savez(path, x=d.x[keep][:, 0].numpy(), y=d.y[keep].numpy())
    return f"npz:{path}"


@pytest.fixture(scope="module")
def full_run(
    study: optuna.Study, trained: list[int], five_classes: str, tmp_path_factory: pytest.TempPathFactory
) -> FinetuneResult:
    out = tmp_path_factory.mktemp("ft") / "full"
    events: list[ProgressEvent] = []
    result = finetune_trial(
        "ft-tiny",
        trained[0],
        FinetuneConfig(epochs=2, downstream_epochs=2, **FAST),
        out=out,
        downstream=five_classes,
        on_progress=events.append,
    )
    result.extra["events"] = events
    return result


@pytest.mark.slow
def test_finetune_reports_test_accuracy_and_saves_everything(full_run: FinetuneResult, study: optuna.Study) -> None:
    r = full_run
    assert r.completed and r.start == "artifact" and r.kd.steps == r.kd.total_steps == 2 * r.kd.steps_per_epoch
    # the study's validation rows (carved from digits) are the default test set and never trained on
    assert r.test_data == "digits" and r.test_images == round(0.2 * len(load_data("digits")))
    assert r.train_images == len(load_data("digits")) - r.test_images
    assert r.teacher_top1 is not None and r.teacher_top1 > 50, "the tiny teacher must be a real teacher"
    assert r.test_top1 is not None and r.test_top1 >= 40, r.test_top1  # chance is 10 %
    assert r.teacher_top1 == pytest.approx(study.user_attrs["teacher_score"], abs=1e-3)  # the study's own teacher
    out = Path(r.out)
    assert (out / CHECKPOINT_FILE).is_file() and not list(out.glob("*.tmp"))
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["test_top1"] == r.test_top1 and saved["kd"]["completed"] is True
    # the final student reloads anywhere and gives the reported accuracy's predictions
    student = structsearch.load(out)
    assert student(torch.zeros(2, 3, 8, 8)).shape == (2, 10)
    events = r.extra["events"]
    kd = [e for e in events if e.phase == "kd"]
    assert [e.step for e in kd] == list(range(1, r.kd.total_steps + 1)) and kd[-1].epoch == 2
    assert all(0 <= e.running_top1 <= 100 and np.isfinite(e.loss) for e in kd)
    # stored on the study as well, keyed by trial number
    summary = study.user_attrs["finetune"][str(r.trial)]
    assert summary["test_top1"] == r.test_top1 and summary["downstream_top1"] == r.downstream["test_top1"]


@pytest.mark.slow
def test_downstream_replaces_the_head(full_run: FinetuneResult, five_classes: str) -> None:
    ds = full_run.downstream
    assert ds is not None and ds["num_classes"] == 5 and ds["data"].endswith("digits5.npz")
    assert ds["phase"]["completed"] and 0 <= ds["test_top1"] <= 100
    assert ds["test_top1"] >= 40, ds  # chance is 20 %
    n = len(load_data(five_classes))
    assert ds["test_images"] == round(0.2 * n) and ds["train_images"] == n - ds["test_images"]
    model = structsearch.load(ds["out"])  # its spec carries num_classes=5
    assert model.get_classifier().out_features == 5 and model(torch.zeros(1, 3, 8, 8)).shape == (1, 5)
    # the KD student beside it keeps its 10-class head
    assert structsearch.load(full_run.out).get_classifier().out_features == 10


@pytest.mark.slow
def test_resume_after_interruption_gives_identical_weights(
    study: optuna.Study, trained: list[int], tmp_path: Path
) -> None:
    # 2 epochs of 8 steps; checkpoints every 3 steps and at the end of each epoch
    config = FinetuneConfig(epochs=2, checkpoint_every=3, **{**FAST, "batch_size": 128})
    trial = trained[1]
    straight = finetune_trial("ft-tiny", trial, config, out=tmp_path / "a")

    def die_at(step: int):
        def hook(e: ProgressEvent) -> None:
            if e.step == step:
                raise Interrupt(step)

        return hook

    out = tmp_path / "b"
    with pytest.raises(Interrupt):  # killed mid-epoch 1: the checkpoint on disk is the one of step 3
        finetune_trial("ft-tiny", trial, config, out=out, on_progress=die_at(5))
    part = finetune_trial("ft-tiny", trial, config, out=out, stop_after_steps=11)  # resumes at 3, stops mid-epoch 2
    assert not part.completed and part.kd.resumed_from_step == 3 and part.kd.steps == 11 and part.test_top1 is None
    done = finetune_trial("ft-tiny", trial, config, out=out)
    assert done.completed and done.kd.resumed_from_step == 11 and done.kd.total_steps == 16
    a, b = structsearch.load(straight.out).state_dict(), structsearch.load(done.out).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert done.test_top1 == straight.test_top1 and done.settings_hash == straight.settings_hash


def test_other_settings_are_refused_and_restart_discards(
    study: optuna.Study, trained: list[int], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    finetune_trial("ft-tiny", trained[0], FinetuneConfig(epochs=2, **FAST), out=out, stop_after_steps=2)
    other = FinetuneConfig(epochs=2, **{**FAST, "lr": 0.1})
    with pytest.raises(CheckpointError, match=r"other settings \(lr 0.05 -> 0.1\); pass --restart") as e:
        finetune_trial("ft-tiny", trained[0], other, out=out, stop_after_steps=3)
    assert "\n" not in str(e.value)
    fresh = finetune_trial("ft-tiny", trained[0], other, out=out, resume=False, stop_after_steps=1)
    assert fresh.kd.resumed_from_step == 0 and fresh.kd.steps == 1


def test_damaged_checkpoint_is_one_line_error(study: optuna.Study, trained: list[int], tmp_path: Path) -> None:
    out = tmp_path / "bad"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes(b"\x80\x02 half a checkpoint")
    with pytest.raises(CheckpointError, match="is damaged.*--restart") as e:
        finetune_trial("ft-tiny", trained[0], FinetuneConfig(epochs=1, **FAST), out=out)
    assert "\n" not in str(e.value)
    torch.save({"model": {}}, out / CHECKPOINT_FILE)  # readable, but not ours
    with pytest.raises(CheckpointError, match="not a structsearch fine-tuning checkpoint"):
        finetune_trial("ft-tiny", trained[0], FinetuneConfig(epochs=1, **FAST), out=out)


def test_missing_artifact_rebuilds_from_spec_and_resolution_attr(
    study: optuna.Study, trained: list[int], tmp_path: Path
) -> None:
    src = study.get_trials(deepcopy=False)[trained[0]]
    # a trial searched at another resolution, whose artifact is not on this machine
    attrs = {**src.user_attrs, "resolution": 12, "artifact": str(tmp_path / "gone")}
    study.add_trial(
        optuna.trial.create_trial(
            params=src.params,
            distributions=src.distributions,
            values=src.values,
            user_attrs=attrs,
            system_attrs=src.system_attrs,
        )
    )
    number = study.get_trials(deepcopy=False)[-1].number
    r = finetune_trial("ft-tiny", number, FinetuneConfig(epochs=1, **{**FAST, "batch_size": 128}), out=tmp_path / "r")
    assert r.start == "rebuilt" and r.input_size == 12 and r.teacher_input_size == 8
    assert r.completed and r.test_top1 is not None and 0 <= r.test_top1 <= 100


def test_bad_requests_are_one_line_errors(study: optuna.Study, trained: list[int]) -> None:
    # proposals fill the budget, so the search leaves no candidate untrained: record one as an
    # over-budget candidate would be
    src = study.get_trials(deepcopy=False)[trained[0]]
    study.add_trial(
        optuna.trial.create_trial(
            params=src.params,
            distributions=src.distributions,
            values=src.values,
            user_attrs={**src.user_attrs, "trained": False},
            system_attrs=src.system_attrs,
        )
    )
    untrained = study.get_trials(deepcopy=False)[-1].number
    with pytest.raises(StructsearchError, match="no study named 'nope'"):
        finetune_trial("nope", 0, FinetuneConfig(epochs=1, **FAST))
    with pytest.raises(NotFound, match="has no trial 999"):
        finetune_trial("ft-tiny", 999, FinetuneConfig(epochs=1, **FAST))
    with pytest.raises(NotFound, match="was not trained"):
        finetune_trial("ft-tiny", untrained, FinetuneConfig(epochs=1, **FAST))
    with pytest.raises(FinetuneError, match="batch size 5000 is larger"):
        finetune_trial("ft-tiny", trained[0], FinetuneConfig(epochs=1, **{**FAST, "batch_size": 5000}))
    with pytest.raises(FinetuneError, match="epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(StructsearchError, match="device"):
        FinetuneConfig(epochs=1, device="tpu")


def test_optimizer_and_lr_default_to_the_studys() -> None:
    """The fine-tune continues at the proxy's rate: the study's own, else the proxy's default."""
    ft = FinetuneConfig(epochs=1)
    assert ft.optimizer_and_lr("sgd", 0.05, inherit=True) == ("sgd", 0.05)
    assert ft.optimizer_and_lr("sgd", None, inherit=True) == ("sgd", INHERITED_LR)
    assert ft.optimizer_and_lr("sgd", None, inherit=False) == ("sgd", SCRATCH_LR)
    assert ft.optimizer_and_lr("adamw", 0.001, inherit=True) == ("adamw", 0.001)
    assert ft.optimizer_and_lr("adamw", None, inherit=True) == ("adamw", ADAMW_LR)
    # another optimizer than the study's never takes the study's rate
    assert FinetuneConfig(epochs=1, optimizer="adamw").optimizer_and_lr("sgd", 0.05, True) == ("adamw", ADAMW_LR)
    assert FinetuneConfig(epochs=1, optimizer="sgd").optimizer_and_lr("adamw", 1e-4, False) == ("sgd", SCRATCH_LR)
    assert FinetuneConfig(epochs=1, lr=0.3).optimizer_and_lr("adamw", 0.001, True) == ("adamw", 0.3)
    with pytest.raises(FinetuneError, match="optimizer"):
        FinetuneConfig(epochs=1, optimizer="lbfgs")  # type: ignore[arg-type]


def test_adamw_study_is_fine_tuned_with_adamw(study: optuna.Study, tmp_path: Path) -> None:
    """The optimizer and rate of the study's proxy reach the fine-tune's training engine."""
    spec = {**STUDY, "name": "ft-adamw", "trials": 1, "baselines": ["uniform"], "proxy": {**STUDY["proxy"]}}
    spec["proxy"] |= {"optimizer": "adamw", "lr": 0.0007}
    number = next(r.trial for r in study_records(run_search(parse_study_spec(spec))) if r.trained)
    config = FinetuneConfig(epochs=1, **{k: v for k, v in FAST.items() if k != "lr"})
    r = finetune_trial("ft-adamw", number, config, out=tmp_path, stop_after_steps=2)
    assert r.extra["optimizer"] == "adamw" and r.extra["lr"] == 0.0007
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 0.0007 and group["decoupled_weight_decay"] is True  # AdamW's, not SGD's
    assert "exp_avg_sq" in next(iter(state["optimizer"]["state"].values()))
    assert json.loads(state["settings"])["optimizer"] == "adamw"


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_errors(study: optuna.Study, trained: list[int], tmp_path: Path) -> None:
    # proposals fill the budget, so the search leaves no candidate untrained: record one as an
    # over-budget candidate would be
    src = study.get_trials(deepcopy=False)[trained[0]]
    study.add_trial(
        optuna.trial.create_trial(
            params=src.params,
            distributions=src.distributions,
            values=src.values,
            user_attrs={**src.user_attrs, "trained": False},
            system_attrs=src.system_attrs,
        )
    )
    untrained = study.get_trials(deepcopy=False)[-1].number
    base = ["finetune", "--epochs", "1", "--device", "cpu"]
    one_line_error([*base, "--study", "nope", "--trial", "0"], "no study named 'nope'")
    one_line_error([*base, "--study", "ft-tiny", "--trial", "999"], "has no trial 999")
    one_line_error([*base, "--study", "ft-tiny", "--trial", str(untrained)], "was not trained")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CHECKPOINT_FILE).write_bytes(b"junk")
    one_line_error(
        [*base, "--study", "ft-tiny", "--trial", str(trained[0]), "--out", str(bad)], "is damaged", "--restart"
    )
    one_line_error(
        [
            *base,
            "--study",
            "ft-tiny",
            "--trial",
            str(trained[0]),
            "--downstream",
            "npz:/nonexistent.npz",
            "--out",
            str(tmp_path / "x"),
            "--batch-size",
            "2000",
        ],
        "batch size 2000",
    )


@pytest.mark.slow
def test_cli_json_run(study: optuna.Study, trained: list[int], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = runner.invoke(
        app,
        [
            "finetune",
            "--study",
            "ft-tiny",
            "--trial",
            str(trained[0]),
            "--epochs",
            "1",
            "--batch-size",
            "128",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["completed"] and data["kd"]["steps"] == 8 and 0 <= data["test_top1"] <= 100
    assert json.loads((out / RESULT_FILE).read_text())["test_top1"] == data["test_top1"]


def test_cli_process_exits_2_without_traceback(home: Path, study: optuna.Study) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "structsearch.cli", "finetune", "--study", "ft-tiny", "--trial", "999", "--epochs", "1"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
