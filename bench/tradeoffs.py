"""Benchmark: the CNN/ViT KD trade-off table (issue 15): teacher x student family x budget x resolution.

    .venv/bin/python bench/tradeoffs.py [--vit-teacher teachers/cifar_vit.safetensors] [--quick]
                                        [--trials 8] [--steps 150] [--precision fp32|bf16] [--home DIR]
                                        [--json OUT.json] [--hours H] [--teachers ResNet-56 ViT]

For every cell of {ResNet-56 (shared checkpoint), the ViT teacher (``--vit-teacher``, a ``cifar_vit``
safetensors file; its rows are skipped with the reason printed when the file is absent)} x student
family {CNN (``cifar_resnet56``'s blocks), ViT (``cifar_vit``'s blocks)} x MACs budget {25%, 50% of
that teacher} x student resolution {24, 32 px} it runs a small search through the library API
(``parse_study_spec`` + ``run_search``: the study's baselines first, then TPE), takes the best feasible
student by proxy accuracy, fine-tunes it (``finetune_trial``: online KD from the teacher, test top-1 on
``test.npz[5000:]``, the half no structure is selected on) and prints one table: the best student's
proxy accuracy, fine-tuned accuracy, MACs, and the CPU latency and peak activation memory that the
study's ``measure:`` section measured (PyTorch eager, batch 1, one thread).

A student of the teacher's own family inherits its weights (SGD at the proxy's inherited rate for
CNNs; AdamW at 5e-4 for ViTs); one of the other family learns from the teacher's logits from scratch
(SGD at 0.05 for CNNs, AdamW at 1e-3 for ViTs, as ``studies/cifar10_resnet56_vit.yaml``). The
fine-tune continues at the same optimizer and rate (``FinetuneConfig``'s default). A ViT at
24 px runs with timm's ``dynamic_img_size`` (its 8x8 position embedding resampled to 6x6), so an
inherited ViT keeps the teacher's embedding. The teacher always sees 32 px. Each cell is its own
study (``warm_start: false``: cells with the same teacher and data would otherwise share trials).

Sizes: the full run searches ``--trials`` 8 students of ``--steps`` 150 proxy steps (batch 64, 10k
training images, selected on ``test.npz[:2000]``) and fine-tunes the best for 1 epoch. ``--quick`` is
a smoke run of every cell on tiny sizes (256 training images, 2 trials of 4 steps -- the uniform
baseline and one searched student --, 8 fine-tune steps, 256 test images): measured 14.3 min wall
(590 s CPU) for all 16 cells on this shared 2-core EPYC at load average 6-10; it is dominated by
per-trial overheads (fvcore counts, latency and memory measurement, teacher caches), not training.
The full run is estimated, not measured: per cell 8 x 150 x 64 = 77k training images at 50-100
images/s (a 50%-MACs student; the full cifar_vit trains at 134 images/s in fp32 on 2 idle cores) is 13-25 min,
plus a 10k-image fine-tune with the teacher online and 5k test images (~5 min); the two teachers'
outputs on 2 x 10k views are cached once each (~5 min each). About 5-8 hours on 2 idle cores; on a
GPU, well under an hour.

Everything goes to a private ``$STRUCTSEARCH_HOME`` (``--home``, default a fresh temporary folder).

The run can be split across sittings: with ``--json OUT``, OUT is rewritten after every cell, and a
later run with the same sizes and the same teacher files keeps the cells OUT already has (to rerun
them, write to another file); each cell's study is named after its sizes and teacher file, so a
retrained teacher or other sizes never resume an old study in the same ``--home``. ``--hours H``
starts no new cell after H hours; ``--teachers`` runs one teacher's rows only. The page's stage
(``bench/results.py``) then reuses every finished cell.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN = SHARED / "data" / "cifar10" / "train.npz"
TEST = SHARED / "data" / "cifar10" / "test.npz"
RESNET56 = SHARED / "weights" / "cifar_resnet" / "resnet56-4bfd9763.th"

#: What a cell's figures mean; cells written under another format are run again. 2: the fine-tune
#: continues at the proxy's rate (``FinetuneConfig``'s default since then; 0.02 SGD before, which cost
#: inherited CNN students 4-10 points in a 1-epoch fine-tune).
FORMAT = 2
#: ``full``: the table's sizes; ``quick``: a smoke run of every cell.
SIZES: dict[str, dict[str, int]] = {
    "full": dict(train=10000, val=2000, test=5000, trials=8, steps=150, batch=64, epochs=1, repeats=20, baselines=3),
    "quick": dict(train=256, val=128, test=256, trials=2, steps=4, batch=32, epochs=1, repeats=3, baselines=1),
}
#: The studies' baselines, the first ``baselines`` of them per size.
BASELINES = ("uniform", "global_magnitude", "depth")
TEACHERS = ("ResNet-56", "ViT")
BUDGETS = ("25%", "50%")
RESOLUTIONS = (24, 32)
#: The student families: the architecture students are cut from, and its proxy optimizer and rates
#: (inherited, from scratch).
FAMILIES: dict[str, dict[str, Any]] = {
    "CNN": {"model": "cifar_resnet56", "kwargs": {"num_classes": 10}, "optimizer": "sgd", "lr": (None, 0.05)},
    "ViT": {"model": "cifar_vit", "kwargs": {}, "optimizer": "adamw", "lr": (0.0005, 0.001)},
}


@dataclass(frozen=True)
class Cell:
    teacher: str
    family: str
    budget: str
    resolution: int

    @property
    def name(self) -> str:
        return f"tradeoffs-{self.teacher}-{self.family}-{self.budget.rstrip('%')}pct-{self.resolution}px".lower()

    def study_name(self, s: dict[str, Any], teacher_digest: str) -> str:
        """The cell's study: its name plus a hash of the sizes and the teacher file it was run with."""
        key = hashlib.sha256(json.dumps([s, teacher_digest], sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{key}"


def file_digest(path: str | Path) -> str:
    """The checkpoint's content hash (``structsearch.models.file_hash``): a retrained teacher is another teacher."""
    from structsearch.models import file_hash

    return file_hash(path)


def teachers(vit_teacher: Path | None) -> dict[str, dict[str, Any] | str]:
    """Each teacher's spec section, or the reason its rows are skipped."""
    out: dict[str, dict[str, Any] | str] = {"ResNet-56": {"model": "cifar_resnet56", "checkpoint": str(RESNET56)}}
    if vit_teacher is None:
        out["ViT"] = "no --vit-teacher given"
    elif not vit_teacher.is_file():
        out["ViT"] = f"{vit_teacher} does not exist (train it: structsearch teach studies/teach_vit_cifar10.yaml)"
    else:
        out["ViT"] = {"model": "cifar_vit", "checkpoint": str(vit_teacher)}
    return out


def cell_spec(cell: Cell, teacher: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """The study of one cell (see the module docstring for its choices)."""
    digest = file_digest(teacher["checkpoint"])
    fam = FAMILIES[cell.family]
    inherit = fam["model"] == teacher["model"]
    dynamic = {"dynamic_img_size": True} if fam["model"] == "cifar_vit" and cell.resolution != 32 else {}
    raw: dict[str, Any] = {
        "name": cell.study_name(s, digest),
        "teacher": {**teacher, "kwargs": {"num_classes": 10, **(dynamic if inherit else {})}},
        "data": {"train": f"npz:{TRAIN}[:{s['train']}]", "val": f"npz:{TEST}[:{s['val']}]"},
        "budget": {"flops": cell.budget},
        "objectives": ["accuracy", "macs"],
        "trials": s["trials"],
        "proxy": {
            "steps": s["steps"],
            "batch_size": s["batch"],
            "optimizer": fam["optimizer"],
            "lr": fam["lr"][0 if inherit else 1],
            "precision": s["precision"],
        },
        "measure": {"runtime": "torch", "device": "cpu", "batch_size": 1, "threads": 1, "repeats": s["repeats"]},
        "baselines": list(BASELINES[: s["baselines"]]),
        "warm_start": False,
        "seed": 0,
    }
    if cell.resolution != 32:
        raw["data"]["resolutions"] = [cell.resolution]
    if not inherit:
        raw["student"] = {"model": fam["model"], "kwargs": {**fam["kwargs"], **dynamic}}
    return raw


def run_cell(cell: Cell, teacher: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    """Search, pick the best feasible student by proxy accuracy, fine-tune it; every figure of its row."""
    from structsearch.errors import BudgetError
    from structsearch.finetune import FinetuneConfig, finetune_trial
    from structsearch.search import parse_study_spec, run_search
    from structsearch.search.results import scored, study_records

    start = time.perf_counter()
    digest = file_digest(teacher["checkpoint"])
    try:
        study = run_search(parse_study_spec(cell_spec(cell, teacher, s), "bench spec"))
    except BudgetError as e:  # e.g. the smallest ViT is above 25% of ResNet-56's MACs: a fact of the table
        return {"skipped": str(e), "trials": 0, "teacher_digest": digest}
    records = study_records(study)
    feasible = [r for r in scored(records) if r.feasible]
    if not feasible:
        return {"skipped": "no feasible student was trained", "trials": len(records), "teacher_digest": digest}
    best = max(feasible, key=lambda r: (r.score, -r.macs))
    searched = time.perf_counter() - start
    tuned = finetune_trial(
        study.study_name,
        best.trial,
        FinetuneConfig(epochs=s["epochs"], batch_size=s["batch"]),
        test=f"npz:{TEST}[5000:{5000 + s['test']}]",
        resume=False,
    )
    return {
        "study": study.study_name,
        "teacher_digest": digest,
        "trials": len(records),
        "trained": len(feasible),
        "teacher_macs": study.user_attrs.get("teacher_macs"),
        "best": {
            "trial": best.trial,
            "baseline": best.baseline,
            "proxy_top1": best.score,
            "finetuned_top1": tuned.test_top1,
            "teacher_top1": tuned.teacher_top1,
            "macs": best.macs,
            "params": best.params,
            "latency_ms": best.latency_ms,
            "latency_device": best.latency_device,
            "memory_bytes": best.memory_bytes,
            "memory_device": best.memory_device,
            "finetune_steps": tuned.kd.total_steps,
            "finetune_optimizer": tuned.extra["optimizer"],
            "finetune_lr": tuned.extra["lr"],
        },
        "seconds": {"search": round(searched, 1), "finetune": round(tuned.seconds, 1)},
    }


def row(cell: Cell, r: dict[str, Any]) -> str:
    head = f"{cell.teacher:9s} {cell.family:3s} {cell.budget:>4s} {cell.resolution:3d}px"
    if "skipped" in r:
        return f"{head}  skipped: {r['skipped']}"
    b = r["best"]
    latency = "-" if b["latency_ms"] is None else f"{b['latency_ms']:.2f}"
    memory = "-" if b["memory_bytes"] is None else f"{b['memory_bytes'] / 1e3:.0f}"
    return (
        f"{head}  {b['proxy_top1']:6.2f}  {b['finetuned_top1']:6.2f}  {b['macs'] / 1e6:7.1f}  "
        f"{latency:>7s}  {memory:>7s}  (trial {b['trial']}{', ' + b['baseline'] if b['baseline'] else ''})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vit-teacher", type=Path, help="the ViT teacher's safetensors (cifar_vit)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of every cell on tiny sizes")
    ap.add_argument("--trials", type=int, help="trials per cell, baselines included (default: 8; quick 2)")
    ap.add_argument("--steps", type=int, help="proxy steps per trial (default: 150; quick 4)")
    ap.add_argument("--home", help="STRUCTSEARCH_HOME (default: a fresh temporary one)")
    ap.add_argument("--json", type=Path, help="write every figure and timing here (after each cell)")
    ap.add_argument("--hours", type=float, help="start no new cell after this many hours")
    ap.add_argument("--teachers", nargs="+", choices=TEACHERS, default=list(TEACHERS), help="rows to run")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the proxies' (proxy.precision)")
    args = ap.parse_args()
    os.environ["STRUCTSEARCH_HOME"] = args.home or tempfile.mkdtemp(prefix="bench-tradeoffs-")
    size = "quick" if args.quick else "full"
    s: dict[str, Any] = dict(SIZES[size])
    s.update({k: v for k, v in (("trials", args.trials), ("steps", args.steps)) if v is not None})
    s["precision"] = args.precision

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"{size} bench in {os.environ['STRUCTSEARCH_HOME']}: {json.dumps(s)}", flush=True)
    t0 = time.perf_counter()
    specs = teachers(args.vit_teacher)
    digests = {t: file_digest(spec["checkpoint"]) for t, spec in specs.items() if not isinstance(spec, str)}
    done = finished_cells(args.json, s, digests)
    cells: list[dict[str, Any]] = []
    lines: list[str] = []
    for tname, teacher in specs.items():
        for family in FAMILIES:
            for budget in BUDGETS:
                for res in RESOLUTIONS:
                    cell = Cell(tname, family, budget, res)
                    result: dict[str, Any]
                    if cell in done:
                        result = done[cell]
                    elif isinstance(teacher, str):
                        result = {"skipped": teacher}
                    elif tname not in args.teachers:
                        result = {"skipped": "not run yet (--teachers)"}
                    elif args.hours is not None and time.perf_counter() - t0 > args.hours * 3600:
                        result = {"skipped": "not run yet (--hours)"}
                    else:
                        print(f"== {cell.name}", flush=True)
                        result = run_cell(cell, teacher, s)
                    lines.append(row(cell, result))
                    print(lines[-1], flush=True)
                    cells.append({"teacher": tname, "family": family, "budget": budget, "resolution": res, **result})
                    if args.json:  # after every cell, so an interrupted run keeps what it finished
                        write_json(args.json, {"format": FORMAT, "size": size, "sizes": s, "cells": cells})
    total = time.perf_counter() - t0
    print(
        "\nteacher   fam  bud  res   proxy%  tuned%  MMACs  lat(ms)  mem(kB)\n" + "\n".join(lines),
        f"\ntotal: {total / 60:.1f} min (cells run in earlier sittings not counted)",
        flush=True,
    )
    if args.json:
        write_json(args.json, {"format": FORMAT, "size": size, "sizes": s, "cells": cells, "seconds": round(total, 1)})


def finished_cells(path: Path | None, sizes: dict[str, Any], digests: dict[str, str]) -> dict[Cell, dict[str, Any]]:
    """The cells an earlier run with the same sizes and teacher files ran (found in its ``--json`` file),
    including those where no student was feasible (a seeded search would find none again)."""
    if path is None or not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("format") != FORMAT or earlier.get("sizes") != sizes:
        print(f"{path} was written in another format or with other sizes: every cell runs again", flush=True)
        return {}
    keys = ("teacher", "family", "budget", "resolution")
    return {
        Cell(*(c[k] for k in keys)): {k: v for k, v in c.items() if k not in keys}
        for c in earlier["cells"]
        if "trials" in c and c.get("teacher_digest") == digests.get(c["teacher"])
    }


def write_json(path: Path, out: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
