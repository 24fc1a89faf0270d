"""``structsearch recheck``: proxy scores vs longer runs, Kendall's tau, stored on the study, resumable.

Real Optuna study (SQLite), real KD runs on digits with a one-epoch teacher.
"""

from __future__ import annotations

import json

import optuna
import pytest

from structsearch.errors import StructsearchError
from structsearch.search import parse_study_spec, run_search
from structsearch.search.recheck import RECHECK_ATTR, rank_agreement, recheck, rechecks_from_attrs, select_candidates
from structsearch.search.results import load_study, pareto_front, study_records
from structsearch.search.storage import open_storage

SPEC = {
    "name": "recheck-tiny",
    "teacher": {"model": "cifar_resnet20", "kwargs": {"num_classes": 10}, "train_epochs": 1},
    "data": {"train": "digits", "val_size": 0.2, "input_size": 8, "hflip": False},
    "budget": {"flops": "60%"},
    "sampler": "random",
    "trials": 8,
    "proxy": {"steps": 3, "batch_size": 32, "lr": 0.05},
}


@pytest.fixture(scope="module")
def study(home) -> optuna.Study:
    return run_search(parse_study_spec(SPEC))


def test_rank_agreement_matches_definition() -> None:
    assert rank_agreement([1, 2, 3, 4], [10, 20, 30, 40])[0] == 1.0
    assert rank_agreement([1, 2, 3, 4], [40, 30, 20, 10])[0] == -1.0
    tau, p, rho = rank_agreement([1, 2, 3, 4], [10, 30, 20, 40])  # one discordant pair of six
    assert tau == pytest.approx((5 - 1) / 6, abs=1e-4) and 0 < p <= 1 and rho == pytest.approx(0.8)
    assert rank_agreement([1.0], [2.0]) == (None, None, None)
    assert rank_agreement([1.0, 1.0], [1.0, 2.0]) == (None, None, None)


def test_selection_takes_front_best_then_random_others(study: optuna.Study) -> None:
    records = study_records(study)
    picks = select_candidates(records, 2, seed=0)
    front = sorted(pareto_front(records), key=lambda r: -r.score)
    groups = [g for _, g in picks]
    assert groups[: min(2, len(front))] == ["front"] * min(2, len(front))
    assert [r.trial for r, g in picks if g == "front"] == [r.trial for r in front[:2]]
    assert len({r.trial for r, _ in picks}) == len(picks)  # no candidate twice
    assert all(r.feasible and r.trained for r, _ in picks)
    with pytest.raises(StructsearchError, match="at least 1"):
        select_candidates(records, 0)


def test_recheck_stores_long_scores_and_tau_and_resumes(study: optuna.Study) -> None:
    result = recheck(study.study_name, top=2, steps=12)
    assert result.complete and result.steps == 12 and result.proxy_steps == 3
    assert 2 <= len(result.entries) <= 4
    proxy_scores = {r.trial: r.score for r in study_records(study)}
    for e in result.entries:
        assert e.proxy_score == proxy_scores[e.trial]
        assert 0 <= e.long_score <= 100
    from scipy.stats import kendalltau

    want = kendalltau([e.proxy_score for e in result.entries], [e.long_score for e in result.entries]).statistic
    if want != want:  # NaN: no spread in one of the rankings, so tau is undefined
        assert result.tau is None
    else:
        assert result.tau == pytest.approx(float(want), abs=1e-4)
    stored = load_study(study.study_name, open_storage()).user_attrs[RECHECK_ATTR]
    assert stored["12"]["entries"] == [json.loads(json.dumps(e.__dict__)) for e in result.entries]

    # a second call at the same length trains nothing and returns the same figures
    calls: list = []
    again = recheck(study.study_name, top=2, steps=12, on_entry=lambda d, t, e: calls.append(e))
    assert again == result and calls == [None]
    assert [r.steps for r in rechecks_from_attrs(load_study(study.study_name, open_storage()).user_attrs)] == [12]


def test_recheck_rejects_a_run_no_longer_than_the_proxy(study: optuna.Study) -> None:
    with pytest.raises(StructsearchError, match="not longer than the search's proxy"):
        recheck(study.study_name, top=2, steps=3)
    with pytest.raises(StructsearchError, match="no study named 'nope'"):
        recheck("nope", top=2, steps=12)


def test_cli_recheck_and_pareto_show_tau(study: optuna.Study) -> None:
    from structsearch.cli import app
    from tests.cli_helpers import runner

    res = runner.invoke(
        app, ["recheck", "--study", study.study_name, "--top", "2", "--steps", "12", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["steps"] == 12 and out["complete"] is True and "tau" in out
    pareto = runner.invoke(app, ["pareto", "--study", study.study_name, "--format", "json"])
    assert pareto.exit_code == 0, pareto.output
    assert json.loads(pareto.stdout)["recheck"][0]["tau"] == out["tau"]
    bad = runner.invoke(app, ["recheck", "--study", study.study_name, "--steps", "2"])
    assert bad.exit_code == 2 and isinstance(bad.exception, SystemExit) and "not longer" in bad.stderr
