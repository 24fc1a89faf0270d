"""The typed trial record (``TrialAttrs``) and ``StoredTrial.open``: no training, in-memory or SQLite studies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from structsearch.errors import StructsearchError
from structsearch.search.record import OWN_FIELDS, TrialAttrs
from structsearch.search.results import record_of
from structsearch.search.storage import open_storage
from structsearch.search.stored import StoredTrial

#: The user attribute keys studies have always stored: renaming one would orphan existing studies.
STORED_KEYS = {
    "baseline",
    "target",
    "prescreen_score",
    "spec",
    "spec_key",
    "resolution",
    "macs",
    "params",
    "latency_ms",
    "latency_p90_ms",
    "latency_device",
    "latency_runtime",
    "latency_batch_size",
    "memory_bytes",
    "memory_device",
    "memory_method",
    "memory_batch_size",
    "trained",
    "score",
    "teacher_agreement",
    "map50",
    "proxy_seconds",
    "proxy_steps",
    "artifact",
    "duplicate_of",
    "copied_from",
}

FULL: dict[str, Any] = {
    "baseline": "uniform",
    "target": 0.75,
    "prescreen_score": 41.5,
    "spec": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "stages": [[{"keep": True, "width": 0.5}]]},
    "spec_key": "0123456789abcdef",
    "resolution": 24,
    "macs": 1_234_567,
    "params": 89_012,
    "latency_ms": 1.2345,
    "latency_p90_ms": 1.5,
    "latency_device": "Synthetic CPU (cpu, 2 threads)",
    "latency_runtime": "torch",
    "latency_batch_size": 1,
    "memory_bytes": 456_789,
    "memory_device": "Synthetic CPU (cpu)",
    "memory_method": "hooks",
    "memory_batch_size": 1,
    "trained": True,
    "score": 87.5,
    "teacher_agreement": 0.93,
    "map50": 41.2,
    "proxy_seconds": 1.25,
    "proxy_steps": 80,
    "artifact": "/somewhere/trial-00003",
    "duplicate_of": 2,
    "copied_from": "other#7",
}


def test_every_stored_key_is_a_field_under_its_old_name() -> None:
    assert set(TrialAttrs.model_fields) == STORED_KEYS == set(FULL)


def test_record_round_trips_through_a_stored_trial() -> None:
    rec = TrialAttrs(**FULL)
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    rec.write(trial)
    study.tell(trial, [87.5, 1_234_567.0])
    frozen = study.get_trials()[0]
    assert frozen.user_attrs == FULL  # stored key for key, value for value
    assert TrialAttrs.read(frozen) == rec


def test_write_stores_only_what_was_set_and_changed() -> None:
    study = optuna.create_study()
    trial = study.ask()
    TrialAttrs(macs=10, params=2).write(trial)
    assert trial.user_attrs == {"macs": 10, "params": 2}  # no defaults, no None
    calls: list[str] = []
    real = trial.set_user_attr
    trial.set_user_attr = lambda k, v: (calls.append(k), real(k, v))  # type: ignore[method-assign]
    TrialAttrs.read(trial).update(score=None, trained=True).write(trial)
    assert calls == ["trained"]


def test_old_style_trial_without_newer_keys_reads() -> None:
    """A trial from before resolutions, latency/memory, teacher agreement and baselines existed."""
    old = {"spec": FULL["spec"], "spec_key": "abc", "macs": 5, "params": 3, "trained": True, "score": 50, "flops": 5}
    frozen = optuna.trial.create_trial(values=[50.0, 5.0], user_attrs=old)
    rec = TrialAttrs.read(frozen)
    assert rec.trained and rec.score == 50.0 and rec.macs == 5
    assert rec.resolution is rec.latency_ms is rec.teacher_agreement is rec.baseline is rec.artifact is None
    r = record_of("old", frozen)
    assert (r.score, r.seconds, r.resolution, r.baseline, r.feasible) == (50.0, None, None, None, True)
    empty = TrialAttrs.read(optuna.trial.create_trial(values=[0.0, 0.0]))  # a trial that failed before storing anything
    assert not empty.trained and empty.attrs() == {}


@pytest.mark.parametrize("bad", [12.5, True, 0, "24"])
def test_malformed_attribute_is_one_line_error(bad: object) -> None:
    frozen = optuna.trial.create_trial(value=1.0, user_attrs={"resolution": bad})
    with pytest.raises(StructsearchError, match="invalid resolution attribute") as e:
        TrialAttrs.read(frozen)
    assert "\n" not in str(e.value)


def test_duplicate_copies_the_record_whole_except_its_own_fields() -> None:
    original = TrialAttrs(**{k: v for k, v in FULL.items() if k not in ("duplicate_of", "copied_from", "baseline")})
    own = {"target": 1.0, "latency_ms": 9.0, "latency_device": "other CPU", "memory_bytes": 1}
    mine = TrialAttrs(spec=FULL["spec"], spec_key=FULL["spec_key"], macs=FULL["macs"], **own)
    dup = mine.duplicate(original, 3)
    assert dup.duplicate_of == 3
    assert dup.model_dump(include=set(own)) == own  # what this trial is and measured stays its own
    differs = {k for k in STORED_KEYS if getattr(dup, k) != getattr(original, k)}
    assert differs == {"duplicate_of"} | {k for k in OWN_FIELDS if getattr(mine, k) != getattr(original, k)}
    assert {"score", "artifact", "trained", "proxy_steps", "teacher_agreement"}.isdisjoint(OWN_FIELDS)


def test_record_view_of_a_warm_start_copy() -> None:
    frozen = optuna.trial.create_trial(
        values=[1.0, 2.0],
        user_attrs={**FULL, "copied_from": "earlier#4"},
        system_attrs={"constraints:flops": 5.0},
    )
    r = record_of("s", frozen)
    assert r.baseline is None and r.copied_from == "earlier#4" and not r.feasible  # another study's baseline
    assert r.seconds == FULL["proxy_seconds"] and r.latency_ms == FULL["latency_ms"]
    assert "copied_from" not in r.to_dict() and "duplicate_of" not in r.to_dict()  # outputs keep their fields


@pytest.fixture
def storage(tmp_path: Path) -> optuna.storages.BaseStorage:
    storage = open_storage(f"sqlite:///{tmp_path / 'studies.db'}")
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("input_size", [3, 32, 32])
    artifact = tmp_path / "trial-00000"
    artifact.mkdir()
    (artifact / "student.pt").write_bytes(b"weights")
    (artifact / "spec.json").write_text("{}")
    trained = {**TrialAttrs(**FULL).update(duplicate_of=None, copied_from=None).attrs(), "artifact": str(artifact)}
    trials = [
        optuna.trial.create_trial(values=[87.5, 1.0], user_attrs=trained),
        optuna.trial.create_trial(values=[0.0, 1.0], user_attrs={"macs": 9, "params": 1, "trained": False}),
        optuna.trial.create_trial(values=[50.0, 1.0], user_attrs={"macs": 9, "params": 1, "trained": True}),
        optuna.trial.create_trial(values=[87.5, 1.0], user_attrs={**trained, "artifact": str(tmp_path / "gone")}),
    ]
    study.add_trials(trials)
    return storage


def test_stored_trial_opens_a_trained_trial(storage: optuna.storages.BaseStorage) -> None:
    st = StoredTrial.open("s", 0, storage)
    assert st.record == record_of("s", st.trial) and st.attrs.score == 87.5
    assert st.input_size == [3, 24, 24]  # the trial's own resolution
    assert st.saved() == Path(st.attrs.artifact or "")
    gone = StoredTrial.open("s", 3, storage)
    assert gone.saved() is None
    with pytest.raises(StructsearchError, match="not on this machine"):
        gone.require_saved()
    with pytest.raises(StructsearchError, match="was not created by structsearch"):
        _ = st.study_spec


@pytest.mark.parametrize(
    ("study", "number", "message"),
    [
        ("nope", 0, "no study named 'nope'; studies here: s"),
        ("s", 9, "study 's' has no trial 9 (trials 0..3)"),
        ("s", 2**40, "study 's' has no trial 1099511627776 (trials 0..3)"),
        ("s", -1, "study 's' has no trial -1"),
        ("s", 1, "trial 1 of 's' was not trained"),
        ("s", 2, "trial 2 of 's' stores no structure"),
    ],
)
def test_stored_trial_errors_are_one_line(
    storage: optuna.storages.BaseStorage, study: str, number: int, message: str
) -> None:
    with pytest.raises(StructsearchError) as e:
        StoredTrial.open(study, number, storage)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
