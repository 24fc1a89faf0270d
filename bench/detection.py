"""Benchmark: a detection study on the CIFAR-10 mosaic, end to end, on a 2-core CPU.

    .venv/bin/python bench/detection.py [--quick] [--home DIR] [--json docs/results/detection_raw.json]

What it measures (issue 16's acceptance), phase by phase, each timed:

1. **teacher** -- the FCOS detector of ``studies/detection_cifar_mosaic.yaml`` at the bench's sizes
   (below), trained once on the training mosaic; its mAP@[.5:.95] and mAP@.5 on the validation mosaic.
2. **search** -- the study's search (its own baselines first: uniform width scaling, global
   magnitude, depth); the Pareto front of mAP vs MACs.
3. **best vs uniform** -- the best *searched* student within the budget (50% of the detector's
   MACs) next to the study's ``uniform`` baseline (every block kept, one width ratio, at the same
   budget), both after the search's short KD (their proxy mAP) and after a longer fine-tune
   (``structsearch finetune``: detection KD + ground-truth loss for several epochs).
4. **proxy fidelity** -- ``structsearch recheck``: the best front candidates plus random feasible
   ones (>= 6 students) retrained 4x as long; Kendall's tau (scipy.stats.kendalltau) between the
   proxy's and the longer run's mAP.

Sizes. The study's own settings (ResNet-56 backbone, 96 px canvases, 4000 images, 12 teacher epochs)
cost about 1.3 GMACs per image and step: hours on 2 cores. The full bench keeps the CIFAR-10
objects and the study's structure (FPN on the last stage + 2 stride-2 levels, 2-conv head, 50%
budget) on a smaller canvas and backbone so that it fits in 1.5 hours: 64 px canvases (1-4 objects),
the shared CIFAR ResNet-20 as the backbone (its classifier weights start it; 181M MACs for the
detector), 2000 training canvases and 300 validation canvases (objects from test[:5000]), a
10-epoch teacher, 16 trials of 80 proxy steps (batch 32), a 320-step recheck of 6 students and a
3-epoch fine-tune. Measured on this machine under load (three jobs sharing 2 cores): a training
step of batch 32 costs 2.9 s for the teacher (about 1.5 s idle), so the estimate idle is
teacher ~16 min, search ~20 min, fine-tunes ~5 min, recheck ~20 min: about 1 hour.
``--quick`` is a smoke run of every phase on tiny sizes (32 px, 64 canvases, 1 teacher epoch).

Everything goes to a private ``$STRUCTSEARCH_HOME`` (``--home``, default a fresh temporary folder),
so the teacher is trained by this run (pass ``--home`` again to reuse it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN = SHARED / "data" / "cifar10" / "train.npz"
TEST = SHARED / "data" / "cifar10" / "test.npz"
BACKBONE = SHARED / "weights" / "cifar_resnet" / "resnet20-12fca82f.th"

#: The bench's sizes: ``full`` fits in 1.5 hours on 2 idle cores; ``quick`` is a smoke run.
SIZES: dict[str, dict[str, int]] = {
    "full": dict(canvas=64, train=2000, val=300, teacher_epochs=10, trials=16, steps=80, batch=32, top=3, epochs=3),
    "quick": dict(canvas=32, train=64, val=32, teacher_epochs=1, trials=6, steps=4, batch=16, top=2, epochs=1),
}


def bench_spec(s: dict[str, int], name: str) -> Any:
    """``studies/detection_cifar_mosaic.yaml`` at the bench's sizes (see the module docstring)."""
    from structsearch.search import parse_study_spec

    raw = yaml.safe_load((ROOT / "studies" / "detection_cifar_mosaic.yaml").read_text())
    raw["name"] = name
    raw["teacher"]["kwargs"].update(
        backbone="cifar_resnet20", backbone_checkpoint=str(BACKBONE), image_size=s["canvas"], fpn_channels=32
    )
    raw["teacher"]["train_epochs"] = s["teacher_epochs"]
    mosaic = "n={n}&size={canvas}&seed={seed}&objects=4"
    raw["data"] = {
        "train": f"mosaic:npz:{TRAIN}[:10000]?" + mosaic.format(n=s["train"], canvas=s["canvas"], seed=0),
        "val": f"mosaic:npz:{TEST}[:5000]?" + mosaic.format(n=s["val"], canvas=s["canvas"], seed=1),
        "input_size": s["canvas"],
    }
    raw["trials"] = s["trials"]
    raw["proxy"].update(steps=s["steps"], batch_size=s["batch"])
    return parse_study_spec(raw, "bench spec")


class Clock:
    """Seconds per phase, printed as each one ends."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self._start, 1)
        print(f"-- {phase}: {self.phases[phase] / 60:.1f} min", flush=True)
        self._start = now


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of every phase on tiny sizes")
    ap.add_argument("--home", help="STRUCTSEARCH_HOME (default: a fresh temporary one)")
    ap.add_argument("--json", type=Path, help="write every figure and timing here")
    args = ap.parse_args()
    os.environ["STRUCTSEARCH_HOME"] = args.home or tempfile.mkdtemp(prefix="bench-detection-")
    size = "quick" if args.quick else "full"
    s = SIZES[size]

    import torch

    from structsearch.detection.proxy import mean_ap
    from structsearch.finetune import FinetuneConfig, finetune_trial
    from structsearch.search.context import plan_search
    from structsearch.search.detection import load_detection_study
    from structsearch.search.recheck import recheck
    from structsearch.search.results import pareto_front, scored, study_records
    from structsearch.search.runner import run_search

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    spec = bench_spec(s, f"bench-detection-{size}")
    clock = Clock()
    print(f"{size} bench in {os.environ['STRUCTSEARCH_HOME']}: {json.dumps(s)}", flush=True)

    # 1. the teacher: trained once (cached in the home), scored on the validation mosaic
    plan = plan_search(spec)
    d = load_detection_study(plan)
    x_val = d.preprocess(d.val.x[d.val_idx])
    teacher_map, teacher_map50 = mean_ap(d.teacher, x_val, d.val.targets(d.val_idx, crowd=True))
    teacher = {"macs": plan.teacher_cost.macs, "params": plan.teacher_cost.params}
    teacher |= {"map": round(teacher_map, 2), "map50": round(teacher_map50, 2), "epochs": s["teacher_epochs"]}
    print(
        f"teacher: mAP {teacher_map:.2f}% (mAP@.5 {teacher_map50:.2f}%) at {plan.teacher_cost.macs / 1e6:.0f}M MACs; "
        f"budget {plan.max_macs / 1e6:.0f}M MACs",
        flush=True,
    )
    clock.lap("teacher")

    # 2. the search and its front
    study = run_search(spec)
    records = study_records(study)
    attrs = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    front = [
        {"trial": r.trial, "baseline": r.baseline, "map": r.score, "map50": attrs[r.trial].get("map50"), "macs": r.macs}
        for r in pareto_front(records)
    ]
    print(f"search: {len(records)} trials; front (mAP vs MACs):", flush=True)
    for f in front:
        print(f"  trial {f['trial']:3d} {f['baseline'] or '':17s} {f['macs'] / 1e6:7.1f}M MACs  mAP {f['map']:.2f}%")
    clock.lap("search")

    # 3. the best searched student within the budget and uniform width scaling, short KD then fine-tuned
    feasible = [r for r in scored(records) if r.feasible]
    best = max((r for r in feasible if r.baseline is None), key=lambda r: r.score)
    uniform = next(r for r in feasible if r.baseline == "uniform")
    compared: dict[str, Any] = {}
    for name, r in (("searched", best), ("uniform", uniform)):
        tuned = finetune_trial(
            study.study_name, r.trial, FinetuneConfig(epochs=s["epochs"], batch_size=s["batch"]), resume=False
        )
        compared[name] = {
            "trial": r.trial,
            "macs": r.macs,
            "budget_used": round(r.macs / plan.max_macs, 3),
            "short_kd_map": r.score,
            "short_kd_map50": attrs[r.trial].get("map50"),
            "finetuned_map": tuned.test_map,
            "finetuned_map50": tuned.test_map50,
            "finetune_steps": tuned.kd.total_steps,
            "finetune_seconds": round(tuned.seconds, 1),
        }
        print(
            f"{name:8s} trial {r.trial}: {r.macs / 1e6:.1f}M MACs ({100 * r.macs / plan.max_macs:.0f}% of budget), "
            f"short KD mAP {r.score:.2f}% -> fine-tuned ({tuned.kd.total_steps} steps) {tuned.test_map:.2f}% "
            f"(mAP@.5 {tuned.test_map50:.2f}%)",
            flush=True,
        )
    clock.lap("finetune")

    # 4. proxy fidelity: Kendall's tau against 4x longer training
    fidelity = recheck(study.study_name, top=s["top"], steps=4 * s["steps"])
    tau = "n/a" if fidelity.tau is None else f"{fidelity.tau:+.2f} (p={fidelity.tau_p_value:.3f})"
    print(f"recheck: {len(fidelity.entries)} students at {fidelity.steps} steps, Kendall tau {tau}", flush=True)
    for e in fidelity.entries:
        print(
            f"  trial {e.trial:3d} {e.group:6s} {e.macs / 1e6:7.1f}M MACs  proxy {e.proxy_score:.2f}%  long {e.long_score:.2f}%"
        )
    clock.lap("recheck")

    total = sum(clock.phases.values())
    print(f"total: {total / 60:.1f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in clock.phases.items())})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "size": size,
            "sizes": s,
            "spec": spec.model_dump(),
            "teacher": teacher,
            "max_macs": plan.max_macs,
            "trials": len(records),
            "front": front,
            "compared": compared,
            "recheck": fidelity.to_dict(),
            "seconds": clock.phases,
        }
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
