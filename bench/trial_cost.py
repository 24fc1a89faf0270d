"""Benchmark: what a search trial costs beyond the student's own training steps.

    .venv/bin/python bench/trial_cost.py [--spec studies/cifar10_resnet56.yaml] [--trials 6] [--json out.json]

In one process, on the spec's data and teacher (ResNet-56 on CIFAR-10 by default):

* **trial**: ``--trials`` real trials of a fresh study (proposal, build, fvcore count, latency and
  memory measurement, BatchNorm recalibration, the KD proxy, validation, artifact, storage writes),
  each timed around ``Objective.__call__``;
* **steps**: the same students' ``proxy.steps`` optimisation steps alone, on the precomputed teacher
  outputs, with no evaluation and nothing else;
* **online**: the same steps with the teacher run on every batch instead of its cached outputs.

Prints per-trial seconds and the two ratios from the same run: ``trial / steps`` (the overhead of
everything that is not training; goal <= 1.2) and ``online / steps`` (what the teacher cache saves).
Steps and online runs alternate per student, so load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def time_steps(distiller, student, online_source=None) -> float:
    """Seconds of the proxy's optimisation steps alone (no recalibration, probe or evaluation)."""
    from structsearch.distill.losses import distill_loss
    from structsearch.train import make_optimizer

    cfg = distiller.config
    source = online_source or distiller.source
    student.to(distiller.device).to(memory_format=torch.channels_last).train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for pairs in distiller._pair_batches(gen, cfg.steps):
        x = distiller._pre(distiller.train_views[pairs])
        t_logits, _ = source(pairs, x)
        out = student(x)
        loss = distill_loss(out, t_logits, distiller.train_y[pairs % distiller.n_train], cfg.temperature, cfg.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "studies" / "cifar10_resnet56.yaml"))
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ["STRUCTSEARCH_HOME"] = tempfile.mkdtemp(prefix="trial-cost-")
    os.chdir(ROOT)

    from structsearch.distill.teacher import OnlineTeacher
    from structsearch.search.context import build_context, plan_search
    from structsearch.search.objective import Objective
    from structsearch.search.spec import load_study_spec
    from structsearch.search.storage import open_storage
    from structsearch.search.study import open_study
    from structsearch.space import ArchSpec
    from structsearch.surgery import build_student, get_importance

    spec = load_study_spec(args.spec).with_overrides(
        name="trial-cost", trials=args.trials, baselines=[], warm_start=False
    )
    plan = plan_search(spec)
    ctx = build_context(plan)  # teacher outputs cached here, before anything is timed
    study = open_study(plan, open_storage())
    objective = Objective(ctx)
    trial_s = []
    for _ in range(args.trials):
        trial = study.ask()
        start = time.perf_counter()
        values = objective(trial)
        trial_s.append(time.perf_counter() - start)
        study.tell(trial, values)
    importance = get_importance(spec.importance, spec.seed)
    online = OnlineTeacher(ctx.distiller.teacher.to(ctx.distiller.device), ())
    steps_s, online_s = [], []
    for t in study.get_trials():
        student = build_student(ctx.base, ArchSpec.from_dict(t.user_attrs["spec"]), importance)
        steps_s.append(time_steps(ctx.distiller, copy.deepcopy(student)))
        online_s.append(time_steps(ctx.distiller, copy.deepcopy(student), online))
    print(
        f"{spec.teacher.model}, {spec.proxy.steps} steps x batch {spec.proxy.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"{'trial':>5s} {'MACs':>8s} {'trial s':>8s} {'steps s':>8s} {'online s':>9s} {'trial/steps':>12s}")
    for t, a, b, c in zip(study.get_trials(), trial_s, steps_s, online_s):
        print(f"{t.number:5d} {t.user_attrs['macs'] / 1e6:7.1f}M {a:8.2f} {b:8.2f} {c:9.2f} {a / b:12.2f}")
    ratio = sum(trial_s) / sum(steps_s)
    cache = sum(online_s) / sum(steps_s)
    print(f"\ntrial / steps: {ratio:.2f} (goal <= 1.2)   online teacher / cached: {cache:.2f}x (goal >= 1.5)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "trials": len(trial_s),
                    "trial_s": trial_s,
                    "steps_s": steps_s,
                    "online_s": online_s,
                    "trial_over_steps": round(ratio, 3),
                    "online_over_cached": round(cache, 3),
                    "median_trial_s": statistics.median(trial_s),
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
