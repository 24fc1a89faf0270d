"""End-to-end search on the embedded default data (digits), tiny enough to run in seconds.

Real Optuna studies in a real SQLite file, real KD proxy runs, real teachers (trained for one epoch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from structsearch.errors import BudgetError, FeatureKDError, StructsearchError
from structsearch.search import (
    best_under_budget,
    default_spec,
    export_trial,
    load_study_spec,
    pareto_front,
    parse_study_spec,
    run_search,
    study_records,
)
from structsearch.search.context import load_study_data, plan_search
from structsearch.search.record import OWN_FIELDS, TrialAttrs
from structsearch.search.results import load_study
from structsearch.search.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1},
    "data": {"train": "digits", "val_size": 0.2, "input_size": 8},
    "budget": {"flops": "40%"},
    "trials": 6,
    "proxy": {"steps": 4, "batch_size": 32},
}


@pytest.fixture(scope="module")
def tiny_study(home: Path) -> optuna.Study:
    return run_search(parse_study_spec(TINY))


def test_spec_files_parse_and_default_matches_yaml() -> None:
    assert load_study_spec(ROOT / "studies" / "digits_default.yaml") == default_spec()
    cifar = load_study_spec(ROOT / "studies" / "cifar10_resnet56.yaml")
    assert cifar.teacher.model == "cifar_resnet56" and cifar.budget.flops == "50%"
    vit = load_study_spec(ROOT / "studies" / "cifar10_resnet56_vit.yaml")
    assert vit.student.model == "vit_tiny_patch16_224" and vit.teacher == cifar.teacher


def test_cnn_to_vit_study_fits_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped CNN-teacher -> ViT-student spec is feasible: its smallest ViT is under 50 %."""
    monkeypatch.chdir(ROOT)  # the spec's paths are relative to the project root
    plan = plan_search(load_study_spec("studies/cifar10_resnet56_vit.yaml"))
    assert not plan.inherit and plan.smallest_cost.macs < plan.max_macs < plan.teacher_cost.macs


def test_search_records_costs_constraints_and_scores(tiny_study: optuna.Study) -> None:
    trials = tiny_study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert tiny_study.metric_names == ["accuracy", "macs"]
    max_macs = tiny_study.user_attrs["max_macs"]
    assert max_macs == round(0.4 * tiny_study.user_attrs["teacher_macs"])
    for t in trials:
        assert {"spec", "spec_key", "macs", "params", "trained"} <= set(t.user_attrs)
        over = t.user_attrs["macs"] > max_macs
        assert t.constraints["flops"] == t.user_attrs["macs"] - max_macs
        # over-budget candidates are recorded with their cost and never trained
        assert t.user_attrs["trained"] is (not over)
        assert ("artifact" in t.user_attrs) is (not over)
        if not over:
            assert 0 <= t.user_attrs["score"] <= 100 and t.values[1] == t.user_attrs["macs"]


def test_pareto_front_is_feasible_and_non_dominated(tiny_study: optuna.Study) -> None:
    records = study_records(tiny_study)
    front = pareto_front(records)
    assert front, "at least one trained feasible candidate"
    for a in front:
        assert a.feasible and a.trained
        for b in records:
            if b.trained and b.feasible and b is not a:
                assert not (b.score > a.score and b.macs <= a.macs) and not (b.score >= a.score and b.macs < a.macs)


def test_rerun_resumes_and_extends(home: Path, tiny_study: optuna.Study) -> None:
    assert len(run_search(parse_study_spec(TINY)).get_trials()) == 6  # nothing left to do
    more = run_search(parse_study_spec({**TINY, "trials": 8}))
    assert len(more.get_trials()) == 8


def test_same_structure_is_not_trained_twice(home: Path, tiny_study: optuna.Study) -> None:
    # another seed: another fingerprint, so no warm start from "tiny"
    spec = parse_study_spec({**TINY, "name": "tiny-dup", "trials": 2, "seed": 1, "baselines": []})
    plan = plan_search(spec)
    storage = open_storage()
    from structsearch.search.study import open_study

    study = open_study(plan, storage)
    params = plan.proposals(None).largest()  # the same shape at the same target, twice
    study.enqueue_trial(params, user_attrs={"target": 1.0})
    study.enqueue_trial(params, user_attrs={"target": 1.0})
    run_search(spec)
    a, b = study.get_trials()
    assert a.user_attrs["spec_key"] == b.user_attrs["spec_key"] and "duplicate_of" not in a.user_attrs
    assert b.user_attrs["duplicate_of"] == a.number and b.user_attrs["score"] == a.user_attrs["score"]
    # the duplicate holds its original's record whole; only its own measurement and provenance differ
    ra, rb = TrialAttrs.read(a), TrialAttrs.read(b)
    differs = {k for k in TrialAttrs.model_fields if getattr(ra, k) != getattr(rb, k)}
    assert "duplicate_of" in differs and differs <= OWN_FIELDS
    assert rb.artifact == ra.artifact and rb.proxy_steps == ra.proxy_steps and rb.trained


def test_new_budget_warm_starts_from_earlier_trials(home: Path, tiny_study: optuna.Study) -> None:
    spec = parse_study_spec({**TINY, "name": "tiny-30", "budget": {"flops": "30%"}, "trials": 1})
    study = run_search(spec)
    copied = [t for t in study.get_trials() if "copied_from" in t.user_attrs]
    assert copied, "trained trials of the same teacher/data/proxy are reused"
    max_macs = study.user_attrs["max_macs"]
    for t in copied:
        assert t.constraints["flops"] == t.user_attrs["macs"] - max_macs
    own = [t for t in study.get_trials() if "copied_from" not in t.user_attrs]
    assert [t.state for t in own].count(TrialState.COMPLETE) == 1  # the rest: baselines still WAITING


def test_best_under_budget(home: Path, tiny_study: optuna.Study) -> None:
    records = [r for r in study_records(tiny_study) if r.trained]
    limit = sorted(r.macs for r in records)[len(records) // 2]
    best = best_under_budget(str(limit), study="tiny")
    assert best.macs <= limit
    assert best.score == max(r.score for r in records if r.macs <= limit)
    with pytest.raises(BudgetError, match="nearest: study tiny"):
        best_under_budget("1k", study="tiny")
    with pytest.raises(StructsearchError, match="no study named 'nope'"):
        best_under_budget("300M", study="nope")
    with pytest.raises(StructsearchError, match="does not exist"):
        best_under_budget("300M", storage_url=f"sqlite:///{home}/missing.db")
    with pytest.raises(BudgetError, match="300MB"):
        best_under_budget("300MB")


def test_budget_below_smallest_student_stores_nothing(home: Path) -> None:
    with pytest.raises(BudgetError, match="below the smallest student"):
        run_search(parse_study_spec({**TINY, "name": "impossible", "budget": {"flops": "1k"}}))
    assert "impossible" not in optuna.get_all_study_names(open_storage())


def test_feature_kd_a_family_cannot_pair_stores_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feature KD is checked against the teacher's family before the study is created: a family without
    feature taps (every registered classification family has them: here the CIFAR ResNets' are taken
    away) is a one-line error with ``proxy.feature_kd`` and leaves no study behind."""
    from structsearch.distill import taps

    monkeypatch.delitem(taps._FIXED_STAGES, "cifar_resnet")
    spec = parse_study_spec({**TINY, "name": "no-taps", "proxy": {**TINY["proxy"], "feature_kd": True}})
    with pytest.raises(FeatureKDError, match=r"not supported for cifar_resnet models .* run without --feature-kd"):
        run_search(spec)
    assert "no-taps" not in optuna.get_all_study_names(open_storage())


def test_bad_specs_give_one_line_errors() -> None:
    with pytest.raises(StructsearchError, match="unknown model 'resnet5000'"):
        plan_search(parse_study_spec({**TINY, "teacher": {"model": "resnet5000"}}))
    with pytest.raises(StructsearchError, match="objectives"):
        parse_study_spec({**TINY, "objectives": ["macs"]})
    with pytest.raises(BudgetError, match="-1"):
        parse_study_spec({**TINY, "budget": {"flops": "-1"}})
    with pytest.raises(StructsearchError, match="unknown_field"):
        parse_study_spec({**TINY, "unknown_field": 1})


def test_single_objective_search_with_pruner(home: Path) -> None:
    spec = parse_study_spec(
        {
            **TINY,
            "name": "tiny-single",
            "objectives": ["accuracy"],
            "trials": 3,
            "proxy": {"steps": 5, "batch_size": 32},
        }
    )
    study = run_search(spec)
    assert len(study.directions) == 1
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials())
    assert any(t.intermediate_values for t in study.get_trials() if t.user_attrs.get("trained"))


def test_export_reloads_in_fresh_process_and_onnx(home: Path, tiny_study: optuna.Study, tmp_path: Path) -> None:
    best = pareto_front(study_records(tiny_study))[-1]
    out = tmp_path / "student"
    written = export_trial("tiny", best.trial, out, onnx=True)
    assert {p.name for p in written} == {"student.pt", "spec.json", "recipe.json", "trial.json", "student.onnx"}
    assert json.loads((out / "spec.json").read_text()) == best.spec
    assert json.loads((out / "trial.json").read_text())["score"] == best.score
    code = f"import torch, structsearch; m = structsearch.load({str(out)!r}); print(m(torch.zeros(2, 3, 8, 8)).shape)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch.Size([2, 10])" in res.stdout
    # proposals fill the budget, so a search rarely leaves a candidate untrained: make one
    untrained = optuna.create_study(study_name="tiny-untrained", storage=open_storage())
    untrained.add_trial(optuna.trial.create_trial(value=0.0, user_attrs={"trained": False, "macs": 1, "params": 1}))
    with pytest.raises(StructsearchError, match="not trained"):
        export_trial("tiny-untrained", 0, tmp_path / "x")


def test_cli_end_to_end(home: Path, tiny_study: optuna.Study, tmp_path: Path) -> None:
    from structsearch.cli import app
    from tests.cli_helpers import one_line_error, runner

    res = runner.invoke(app, ["best", "--budget-flops", "40%", "--study", "tiny", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert {"study", "trial", "macs", "params", "score"} <= set(json.loads(res.stdout))
    one_line_error(["best", "--budget-flops", "300MB"], "300MB")
    lst = runner.invoke(app, ["studies", "--format", "json"])
    assert "tiny" in {r["study"] for r in json.loads(lst.stdout)}
    png = tmp_path / "front.png"
    assert runner.invoke(app, ["pareto", "--study", "tiny", "--plot", str(png)]).exit_code == 0
    assert png.stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.serial  # heartbeats of 1 s: run alone
def test_killed_cli_search_resumes_to_the_requested_trials(home: Path, tmp_path: Path) -> None:
    """``kill -9`` mid-trial: the dead trial stops beating, is failed on resume, and the resumed
    search still ends with ``trials`` finished trials of its own."""
    import time

    import yaml

    spec = {**TINY, "name": "killed", "trials": 3, "proxy": {"steps": 400, "batch_size": 32}, "warm_start": False}
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "structsearch.cli", "search", str(path), "--heartbeat", "1", "--format", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = open_storage()
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            try:
                study = load_study("killed", storage)
            except StructsearchError:
                study = None
            running = [] if study is None else study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            # a feasible candidate that has been costed is in (or about to start) its 400-step proxy
            if any(t.user_attrs.get("macs", float("inf")) <= study.user_attrs["max_macs"] for t in running):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the search never started a trial")
    finally:
        proc.kill()
        proc.wait()
    time.sleep(3.5)  # three missed heartbeats
    run = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert run.returncode == 0, run.stderr
    states = [t.state for t in load_study("killed", open_storage()).get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) == 1
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states


def test_baselines_are_the_first_trials_and_flagged(tiny_study: optuna.Study) -> None:
    """Uniform, global magnitude and depth are scored first, flagged, and the search is compared to them."""
    from structsearch.search.results import baseline_gains

    trials = tiny_study.get_trials()
    assert [t.user_attrs.get("baseline") for t in trials[:3]] == ["uniform", "global_magnitude", "depth"]
    assert all("baseline" not in t.user_attrs for t in trials[3:])
    assert trials[0].params and not trials[1].params and not trials[2].params  # uniform is a shape, the others fixed
    records = study_records(tiny_study)
    assert [r.baseline for r in records[:3]] == ["uniform", "global_magnitude", "depth"]
    gains = baseline_gains(records)
    assert [g.baseline for g in gains] == ["uniform", "global_magnitude", "depth"]
    searched = [r for r in records if r.baseline is None and r.trained]
    for g in gains:
        rivals = [r for r in searched if r.macs <= g.macs]
        if rivals:
            best = max(rivals, key=lambda r: r.score)
            assert g.searched_score == best.score and g.gain == pytest.approx(best.score - g.score, abs=1e-3)
        else:
            assert g.gain is None


def test_searched_trials_fill_the_budget(tiny_study: optuna.Study) -> None:
    max_macs = tiny_study.user_attrs["max_macs"]
    for t in tiny_study.get_trials():
        if "baseline" in t.user_attrs:
            continue
        target = t.user_attrs["target"]  # multi-objective: even trials at the budget, odd ones below it
        assert target == 1.0 if t.number % 2 == 0 else target < 1.0
        assert 0.9 * target * max_macs <= t.user_attrs["macs"] <= target * max_macs + 1


def test_trained_structure_is_the_realised_parameters(home: Path, tiny_study: optuna.Study) -> None:
    """No silent mismatch: a trial's stored parameters realise exactly the structure it trained."""
    from structsearch.cost import measure_cost
    from structsearch.space import ArchSpec
    from structsearch.surgery import build_student, build_student_with_recipe

    plan = plan_search(parse_study_spec(TINY))
    proposals = plan.proposals(None)
    teacher = load_study_data(plan).teacher  # the trained teacher the students were cut from

    def measure(spec: ArchSpec) -> tuple[int, int]:
        c = measure_cost(build_student(plan.base, spec), plan.input_size)
        return c.macs, c.params

    checked = 0
    for t in tiny_study.get_trials():
        stored = ArchSpec.from_dict(t.user_attrs["spec"])
        artifact = ArchSpec.load(Path(t.user_attrs["artifact"]) / "spec.json")
        assert artifact == stored
        # the artifact keeps the surgery recipe that rebuilds the student from the teacher
        recipe = json.loads((Path(t.user_attrs["artifact"]) / "recipe.json").read_text())
        assert recipe == json.loads(json.dumps(build_student_with_recipe(teacher, stored)[1]))
        assert recipe["family"] == "cifar_resnet" and recipe["importance"] == "l1"
        if t.user_attrs.get("baseline") in (None, "uniform"):
            assert proposals.propose(t.params, measure, t.user_attrs.get("target", 1.0)) == stored
            checked += 1
    assert checked >= 3


def test_baselines_are_enqueued_once_and_survive_resume(home: Path) -> None:
    """Created but not run (a killed first run): the resumed search runs each baseline exactly once."""
    from structsearch.search.study import open_study

    spec = parse_study_spec({**TINY, "name": "tiny-resume", "trials": 4, "seed": 3, "warm_start": False})
    open_study(plan_search(spec), open_storage())  # stored with its baselines WAITING, nothing run
    waiting = load_study("tiny-resume", open_storage()).get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["baseline"] for t in waiting] == ["uniform", "global_magnitude", "depth"]
    study = run_search(spec)
    study = run_search(parse_study_spec({**TINY, "name": "tiny-resume", "trials": 5, "seed": 3, "warm_start": False}))
    names = [t.user_attrs.get("baseline") for t in study.get_trials()]
    assert names[:3] == ["uniform", "global_magnitude", "depth"] and names[3:] == [None, None]
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())


def test_spec_rejects_a_bad_fill_and_unknown_baselines() -> None:
    with pytest.raises(StructsearchError, match="budget.fill"):
        parse_study_spec({**TINY, "budget": {"flops": "40%", "fill": 1.5}})
    with pytest.raises(StructsearchError, match="baselines"):
        parse_study_spec({**TINY, "baselines": ["magic"]})
    assert parse_study_spec({**TINY, "baselines": []}).baselines == ()


def test_cli_pareto_and_best_report_the_baselines(home: Path, tiny_study: optuna.Study, tmp_path: Path) -> None:
    import yaml

    from structsearch.cli import app
    from structsearch.search.results import baseline_gains, scored
    from tests.cli_helpers import runner

    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    done = runner.invoke(app, ["search", str(spec_file)], env={"COLUMNS": "200"})  # has its trials: runs none
    assert done.exit_code == 0 and "images at 8x8 px" in done.stdout
    assert "search tiny at 8x8 px" in done.stderr  # the progress line names the size before any trial
    feasible = [r for r in scored(study_records(tiny_study)) if r.feasible]  # and a resumed study's progress
    assert f"feasible {len(feasible)}, best {max(r.score for r in feasible):.2f}%" in done.stderr
    res = runner.invoke(app, ["pareto", "--study", "tiny", "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["baselines"] == [g.to_dict() for g in baseline_gains(study_records(tiny_study))]
    assert {r["baseline"] for r in data["front"]} <= {None, "uniform", "global_magnitude", "depth"}
    table = runner.invoke(app, ["pareto", "--study", "tiny"], env={"COLUMNS": "200"})
    assert "gain over the baselines" in table.stdout and "global_magnitude (t1:" in table.stdout
    best = runner.invoke(app, ["best", "--study", "tiny", "--budget-flops", "40%"], env={"COLUMNS": "200"})
    assert best.exit_code == 0 and "uniform (t0:" in best.stdout


def test_prescreen_enqueues_the_best_quick_scores_once(home: Path) -> None:
    """The pre-screen ranks shapes without training and hands only the best ``keep`` to the proxy."""
    spec = parse_study_spec(
        {
            **TINY,
            "name": "tiny-prescreen",
            "trials": 5,
            "seed": 5,
            "warm_start": False,
            "baselines": [],
            "prescreen": {"candidates": 8, "keep": 0.3, "images": 64, "batches": 2},
        }
    )
    study = run_search(spec)
    summary = study.user_attrs["prescreen"]
    assert summary["status"] == "done" and 1 <= summary["candidates"] <= 8
    screened = [t for t in study.get_trials() if "prescreen_score" in t.user_attrs]
    assert len(screened) == summary["kept"] == -(-summary["candidates"] * 3 // 10)  # ceil(0.3 x distinct)
    scores = [t.user_attrs["prescreen_score"] for t in screened]
    assert scores == sorted(scores, reverse=True) and scores[0] == summary["best"]
    assert [t.number for t in screened] == list(range(len(screened)))  # the first trials
    max_macs = study.user_attrs["max_macs"]
    assert all(0.9 * max_macs <= t.user_attrs["macs"] <= max_macs for t in screened)  # aimed at the budget
    again = run_search(spec.with_overrides(trials=6))  # resumed: not pre-screened twice
    assert sum("prescreen_score" in t.user_attrs for t in again.get_trials()) == len(screened)


def test_a_changed_teacher_checkpoint_is_another_teacher(home: Path, tmp_path: Path) -> None:
    """Same spec, same path, retrained weights: no resume across it, no warm start from it."""
    import torch

    from structsearch.models import create_model
    from structsearch.search.study import open_study

    ckpt = tmp_path / "teacher.pt"
    torch.save(create_model("cifar_resnet20", seed=0).state_dict(), ckpt)
    base = {**TINY, "teacher": {"model": "cifar_resnet20", "checkpoint": str(ckpt)}, "trials": 1}
    first = run_search(parse_study_spec({**base, "name": "ckpt-old", "baselines": ["uniform"]}))
    assert first.user_attrs["teacher_checkpoint"] and [t.state for t in first.get_trials()] == [TrialState.COMPLETE]
    same = run_search(parse_study_spec({**base, "name": "ckpt-same", "budget": {"flops": "30%"}}))
    assert any("copied_from" in t.user_attrs for t in same.get_trials())  # the same file: warm-started
    torch.save(create_model("cifar_resnet20", seed=1).state_dict(), ckpt)  # "retrained" in place
    with pytest.raises(StructsearchError, match="was run with another .*teacher.pt"):
        open_study(
            plan_search(parse_study_spec({**base, "name": "ckpt-old", "baselines": ["uniform"]})), open_storage()
        )
    fresh = run_search(parse_study_spec({**base, "name": "ckpt-new", "budget": {"flops": "30%"}}))
    assert not any("copied_from" in t.user_attrs for t in fresh.get_trials())
    assert fresh.user_attrs["teacher_checkpoint"] != first.user_attrs["teacher_checkpoint"]


def test_student_inherit_false_starts_the_teachers_own_structure_from_scratch(tmp_path: Path) -> None:
    """The ablation against inheritance: same model and kwargs as the teacher, fresh weights."""
    import torch

    from structsearch.models import create_model

    ckpt = tmp_path / "teacher.pt"
    torch.save(create_model("cifar_resnet20", seed=7, num_classes=10).state_dict(), ckpt)
    teacher = {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "checkpoint": str(ckpt)}
    base = {**TINY, "teacher": teacher}
    inherited = plan_search(parse_study_spec(base))
    scratch = plan_search(parse_study_spec({**base, "student": {"inherit": False}}))
    assert inherited.inherit and not scratch.inherit
    assert (scratch.base_model, scratch.base_kwargs) == (inherited.base_model, inherited.base_kwargs)
    loaded = create_model("cifar_resnet20", checkpoint=str(ckpt), num_classes=10)
    fresh = scratch.student_base(loaded).conv1.weight
    assert inherited.student_base(loaded).conv1.weight is loaded.conv1.weight
    assert not torch.equal(fresh, loaded.conv1.weight)  # a fresh initialisation from the study's seed


def test_a_teacher_about_as_good_as_chance_is_warned_about_once(home: Path) -> None:
    """An untrained teacher (as a checkpoint for other data would be) makes every trial a waste: the
    search says so before its first trial, once per study; a teacher well above chance is not flagged."""
    import warnings

    from structsearch.errors import TeacherWarning
    from structsearch.search.runner import teacher_warning

    spec = {**TINY, "name": "untaught", "teacher": {**TINY["teacher"], "train_epochs": 0}, "trials": 1}
    with pytest.warns(TeacherWarning, match=r"about chance \(10% for 10 classes\)"):
        run_search(parse_study_spec(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeacherWarning)
        run_search(parse_study_spec({**spec, "trials": 2}))  # resumed: told already
    assert teacher_warning(plan_search(parse_study_spec(TINY)), 60.0) is None
    assert "14.9% top-1" in (teacher_warning(plan_search(parse_study_spec(TINY)), 14.9) or "")
