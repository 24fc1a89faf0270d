"""Finished trials written straight into a study, for API tests that need results but no training.

Like a worker, :func:`add_trials` also writes them to the service's read model (``ss_trials``)
when the study belongs to a search; :func:`record` does that for trials added otherwise.
"""

from __future__ import annotations

import random
from pathlib import Path

import optuna


def add_trials(
    study: optuna.Study,
    n: int,
    max_macs: int | None = None,
    seed: int = 0,
    artifacts: Path | None = None,
    measured: bool = False,
) -> None:
    """Add ``n`` complete, trained trials with random MACs/params/scores (over budget when
    ``macs > max_macs``); with ``artifacts``, each gets a dummy student.pt + spec.json there;
    ``measured`` adds a latency, peak memory and resolution per trial (with a device name)."""
    rng = random.Random(seed)
    measure_rng = random.Random(seed + 1)  # separate stream: the other figures stay as they were
    trials = []
    for i in range(n):
        macs, params = rng.randint(100_000, 2_000_000), rng.randint(10_000, 300_000)
        score = round(rng.uniform(10, 99), 3)
        feasible = max_macs is None or macs <= max_macs
        attrs = {
            "spec": {"model": "cifar_resnet20", "stages": [[{"keep": True, "width": 0.5}]], "i": i},
            "spec_key": f"{seed:04d}{i:012d}",
            "macs": macs,
            "params": params,
            "trained": feasible,
            "score": score if feasible else None,
            "proxy_seconds": 0.1,
        }
        if measured:
            attrs |= {
                "resolution": measure_rng.choice([24, 28, 32]),
                "latency_ms": round(measure_rng.uniform(0.5, 20.0), 4),
                "latency_device": "Synthetic CPU (cpu, 2 threads)",
                "latency_runtime": "torch",
                "memory_bytes": measure_rng.randint(50_000, 5_000_000),
                "memory_device": "Synthetic CPU (cpu)",
            }
        if artifacts is not None and feasible:
            d = artifacts / study.study_name / f"synthetic-{i:05d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "student.pt").write_bytes(b"not really weights")
            (d / "spec.json").write_text('{"model": "cifar_resnet20"}')
            attrs["artifact"] = str(d)
        system = {"constraints:flops": float(macs - max_macs)} if max_macs is not None else {}
        values = [score if feasible else 0.0, float(macs)][: len(study.directions)]
        trials.append(optuna.trial.create_trial(values=values, user_attrs=attrs, system_attrs=system))
    study.add_trials(trials)
    record(study)


def record(study: optuna.Study) -> None:
    """Write the study's trials to the read model of its search (as the worker's catch-up does)."""
    from sqlalchemy import select

    from structsearch.service.database import Database
    from structsearch.service.readmodel import TrialSync
    from structsearch.service.tables import Search

    storage = study._storage
    url = getattr(storage, "url", None) or getattr(getattr(storage, "_backend", None), "url", None)
    if url is None or not str(url).startswith("postgresql"):
        return
    db = Database(str(url))
    try:
        with db.session() as s:
            search_id = s.scalar(select(Search.id).where(Search.name == study.study_name))
        if search_id is not None:
            TrialSync(db, storage, search_id, study._study_id).catch_up()
    finally:
        db.dispose()
