"""Benchmark: time per candidate for sampling a spec, building the student with inherited weights,
and counting its cost (issue 2). Target: well under one second per candidate on a 2-core CPU.

    .venv/bin/python bench/candidate.py [--models resnet50 deit_small_patch16_224] [--candidates 10]

Prints, per model, the median and max seconds of each phase, and the ratio of the whole
candidate to one teacher forward pass measured in the same process (the baseline).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from structsearch.cost import default_input_size, measure_cost
from structsearch.models import create_model
from structsearch.space import space_of
from structsearch.surgery import build_student


def bench(model_name: str, candidates: int, seed: int) -> None:
    teacher = create_model(model_name).eval()
    size = default_input_size(teacher)
    space = space_of(teacher, model_name)
    x = torch.randn(1, *size)
    with torch.inference_mode():
        teacher(x)
        t = time.perf_counter()
        teacher(x)
        forward = time.perf_counter() - t
    rng = random.Random(seed)
    phases: dict[str, list[float]] = {"sample": [], "build": [], "cost": [], "total": []}
    for _ in range(candidates):
        t0 = time.perf_counter()
        spec = space.sample(rng)
        t1 = time.perf_counter()
        student = build_student(teacher, spec)
        t2 = time.perf_counter()
        measure_cost(student, size)
        t3 = time.perf_counter()
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            phases[k].append(v)
    print(
        f"{model_name} ({space.num_blocks} blocks, input {size[1]}px, {candidates} candidates, {torch.get_num_threads()} threads)"
    )
    for k, v in phases.items():
        print(f"  {k:7s} median {statistics.median(v) * 1000:8.1f} ms   max {max(v) * 1000:8.1f} ms")
    total = statistics.median(phases["total"])
    print(f"  per candidate: {total:.3f} s = {total / forward:.1f}x one teacher forward pass ({forward * 1000:.0f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "deit_small_patch16_224"])
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in args.models:
        bench(name, args.candidates, args.seed)


if __name__ == "__main__":
    main()
