"""Benchmark: does a data-free proxy rank candidates like the real-data proxy? (issues 6 and 15)

    .venv/bin/python bench/datafree.py [--teacher resnet56|vit] [--n 2048] [--iters 2000] [--warmup 100]
                                       [--candidates 10] [--steps 100] [--finetune-steps 0] [--precision bf16]
                                       [--json out.json]
    .venv/bin/python bench/datafree.py --n 256 --iters 20 --candidates 3 --steps 20     # smoke run

Teacher (``--teacher``): the shared ResNet-56 CIFAR-10 checkpoint (DeepInversion), or the shipped ViT
``teachers/cifar_vit.safetensors`` (PSAQ-ViT; its proxy uses AdamW at 5e-4). K random
feasible structures at <= ``--budget`` of the teacher's MACs are sampled from its search space
(``Space.sample``, seeded) and each is scored three ways, with the same proxy settings (steps,
batch, lr, seed) and weights inherited from the teacher:

* ``real``: trained on ``train.npz[:train-size]``, scored on ``test.npz[:val-size]`` -- what
  ``studies/cifar10_resnet56.yaml`` searches with; the reference ranking;
* ``datafree``: trained and scored on the synthetic set alone (validation carved from it, labels =
  the teacher's predictions, so the score is agreement with the teacher on held-out synthetic
  images) -- what a search with ``data.train: synthetic:N`` and no ``data.val`` does;
* ``datafree_train_real_val``: the data-free-trained student scored on the real validation set,
  which separates "training on synthetic images" from "selecting on synthetic images".

With ``--finetune-steps N``, the best candidate by the data-free score is then trained N steps by
the same KD twice -- on the synthetic images only, and on the real training images -- and both are
scored on ``test.npz[5000:]`` (never used above): what a user without data ends with, next to what
the same student reaches with data.

Prints the three score lists, Kendall's tau and Spearman's rho of each data-free ranking against
the real one (scipy.stats), and the synthesis time (total and seconds per optimisation iteration
of one batch). The synthetic set comes from the shared cache when it is there (``--cache-dir`` to
choose another, e.g. an empty one for a cold timing); ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from structsearch.cost import measure_cost
from structsearch.data import Preprocess, load_data, split_train_val
from structsearch.distill import Distiller, ProxyConfig, TeacherCache, TeacherId, top1
from structsearch.distill.synthesis import SynthesisConfig, synthesize
from structsearch.models import create_model
from structsearch.space import space_of
from structsearch.surgery import build_student

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TRAIN = SHARED / "data" / "cifar10" / "train.npz"
TEST = SHARED / "data" / "cifar10" / "test.npz"
#: ``--teacher`` -> (model, checkpoint, proxy optimizer, proxy learning rate for inherited students).
TEACHERS: dict[str, tuple[str, Path, str, float]] = {
    "resnet56": ("cifar_resnet56", SHARED / "weights" / "cifar_resnet" / "resnet56-4bfd9763.th", "sgd", ProxyConfig.lr),
    "vit": ("cifar_vit", Path(__file__).resolve().parents[1] / "teachers" / "cifar_vit.safetensors", "adamw", 5e-4),
}


def sample_candidates(
    teacher: torch.nn.Module, name: str, k: int, budget: float, seed: int, size: tuple[int, int, int]
) -> list[Any]:
    """``k`` distinct random specs whose students cost at most ``budget`` of the teacher's MACs."""
    space = space_of(teacher, name)
    limit = budget * measure_cost(teacher, size).macs
    rng = random.Random(seed)
    found: dict[str, tuple[Any, int]] = {}
    for _ in range(200 * k):
        spec = space.sample(rng)
        key = spec.to_json()
        if key in found:
            continue
        macs = measure_cost(build_student(teacher, spec), size).macs
        if macs <= limit:
            found[key] = (spec, macs)
            if len(found) == k:
                break
    if len(found) < k:
        raise SystemExit(f"only {len(found)} feasible candidates found at {budget:.0%} of the teacher's MACs")
    return list(found.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", choices=sorted(TEACHERS), default="resnet56")
    ap.add_argument("--n", type=int, default=2048, help="synthetic images")
    ap.add_argument("--iters", type=int, default=2000, help="synthesis iterations per batch")
    ap.add_argument("--synth-batch", type=int, default=256, help="images optimised together")
    ap.add_argument(
        "--warmup", type=int, default=100, help="synthesis warm-up iterations, capped at iters/10 (then cosine)"
    )
    ap.add_argument("--method", default="auto")
    ap.add_argument("--synth-val-size", type=float, default=0.2, help="share of the synthetic set held out for scoring")
    ap.add_argument("--candidates", type=int, default=10)
    ap.add_argument("--budget", type=float, default=0.5, help="max MACs as a fraction of the teacher's")
    ap.add_argument("--steps", type=int, default=100, help="proxy steps (studies/cifar10_resnet56.yaml: 100)")
    ap.add_argument("--batch-size", type=int, default=64, help="proxy batch")
    ap.add_argument("--lr", type=float, default=None, help="proxy lr (default: the teacher's, see TEACHERS)")
    ap.add_argument("--finetune-steps", type=int, default=0, help="train the best data-free student this long")
    ap.add_argument(
        "--train-size", type=int, default=None, help="real training images (default: as many as synthetic ones)"
    )
    ap.add_argument("--val-size", type=int, default=2000, help="real validation images, test.npz[:val-size]")
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the synthesis' and the proxies' (proxy.precision)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="default: the shared cache ($STRUCTSEARCH_CACHE / $STRUCTSEARCH_HOME/cache)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    from structsearch.distill import resolve_device

    device = resolve_device(args.device)
    name, ckpt, optimizer, default_lr = TEACHERS[args.teacher]
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} does not exist")
    args.lr = default_lr if args.lr is None else args.lr
    teacher = create_model(name, checkpoint=ckpt).eval()
    preprocess = Preprocess.from_model(teacher)
    size = (3, *preprocess.input_size)
    cache = TeacherCache(args.cache_dir)
    teacher_id = TeacherId.of(name, {}, ckpt)
    figures: dict[str, Any] = {
        "teacher": name,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "n": args.n,
        "iters": args.iters,
        "synth_batch": args.synth_batch,
        "warmup": args.warmup,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "precision": args.precision,
        "candidates": args.candidates,
        "budget": args.budget,
    }

    # -- the synthetic set (cached) --------------------------------------------------------------
    t = time.perf_counter()
    synth = synthesize(
        teacher,
        preprocess,
        args.n,
        method=args.method,
        iterations=args.iters,
        batch_size=args.synth_batch,
        seed=args.seed,
        device=device,
        teacher_id=teacher_id,
        cache=cache,
        config=SynthesisConfig(warmup=args.warmup, precision=args.precision),
        progress=lambda b, nb, losses: print(
            f"  synthesis batch {b}/{nb}: " + ", ".join(f"{k} {v:.3g}" for k, v in losses.items()), flush=True
        ),
    )
    figures["synthesis"] = {**synth.info(), "wall_s": time.perf_counter() - t}
    print(
        f"synthetic set: {args.n} images, {synth.method}, {args.iters} iterations at batch {args.synth_batch}: "
        f"{synth.seconds:.1f} s, {synth.seconds_per_iteration:.3f} s per iteration"
        f"{' (cache hit: figures of the run that made it)' if synth.cache_hit else ''}; "
        f"teacher predicts the target class for {100 * synth.target_agreement:.1f}%; "
        f"label histogram {torch.bincount(synth.data.y, minlength=10).tolist()}",
        flush=True,
    )

    # -- data ------------------------------------------------------------------------------------
    train_size = args.train_size or args.n
    real_train = load_data(f"npz:{TRAIN}[:{train_size}]")
    real_val = load_data(f"npz:{TEST}[:{args.val_size}]")
    figures["real_train"] = len(real_train)
    s_train_idx, s_val_idx = split_train_val(synth.data.y, args.synth_val_size, args.seed)
    config = ProxyConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        optimizer=optimizer,
        lr=args.lr,
        precision=args.precision,
        seed=args.seed,
        device=str(device),
    )

    def real_distiller(cfg: ProxyConfig) -> Distiller:
        return Distiller(
            teacher,
            real_train,
            torch.arange(len(real_train)),
            torch.arange(len(real_val)),
            preprocess,
            cfg,
            val_data=real_val,
            teacher_id=teacher_id,
            cache=cache,
        )

    def free_distiller(cfg: ProxyConfig) -> Distiller:
        return Distiller(
            teacher, synth.data, s_train_idx, s_val_idx, preprocess, cfg, teacher_id=teacher_id, cache=cache
        )

    real_kd, free_kd = real_distiller(config), free_distiller(config)
    figures["teacher_real_val_top1"], _ = real_kd.evaluate(teacher)
    print(
        f"real proxy: {len(real_train)} train images, {len(real_val)} val (test.npz); data-free proxy: "
        f"{len(s_train_idx)} synthetic train, {len(s_val_idx)} synthetic val; teacher {figures['teacher_real_val_top1']:.2f}% "
        f"on the real val",
        flush=True,
    )

    # -- candidates ------------------------------------------------------------------------------
    teacher_macs = measure_cost(teacher, size).macs
    candidates = sample_candidates(teacher, name, args.candidates, args.budget, args.seed, size)
    rows = []
    print(f"{'#':>3} {'MACs %':>7} {'real':>7} {'datafree':>9} {'df->real':>9} {'s/real':>7} {'s/df':>6}")
    for i, (spec, macs) in enumerate(candidates):
        real = real_kd.score(build_student(teacher, spec))
        student = build_student(teacher, spec)
        free = free_kd.score(student)
        hybrid = top1(student, real_val.x, real_val.y, preprocess, 256, device)
        rows.append(
            {
                "macs_ratio": macs / teacher_macs,
                "real": real.val_top1,
                "datafree": free.val_top1,
                "datafree_train_real_val": hybrid,
                "real_seconds": real.seconds,
                "datafree_seconds": free.seconds,
            }
        )
        print(
            f"{i:3d} {100 * macs / teacher_macs:7.1f} {real.val_top1:7.2f} {free.val_top1:9.2f} {hybrid:9.2f} "
            f"{real.seconds:7.1f} {free.seconds:6.1f}",
            flush=True,
        )
    figures["rows"] = rows

    real_scores = [r["real"] for r in rows]
    for column in ("datafree", "datafree_train_real_val"):
        scores = [r[column] for r in rows]
        tau = stats.kendalltau(real_scores, scores)
        rho = stats.spearmanr(real_scores, scores)
        figures[f"{column}_vs_real"] = {
            "kendall_tau": _num(tau.statistic),
            "kendall_p": _num(tau.pvalue),
            "spearman_rho": _num(rho.statistic),
            "spearman_p": _num(rho.pvalue),
        }
        print(
            f"{column:>24s} vs real: Kendall tau {tau.statistic:+.3f} (p {tau.pvalue:.3g}), "
            f"Spearman rho {rho.statistic:+.3f} (p {rho.pvalue:.3g})"
        )
    print(f"scores real:     {[round(s, 2) for s in real_scores]}")
    print(f"scores datafree: {[round(r['datafree'], 2) for r in rows]}")
    if args.finetune_steps:
        best = max(range(len(rows)), key=lambda i: rows[i]["datafree"])
        longer = replace(config, steps=args.finetune_steps)
        kds = {"synthetic": free_distiller(longer), "real": real_distiller(longer)}
        figures["finetune"] = finetune_both(teacher, candidates[best][0], kds, preprocess, args.finetune_steps, device)
        figures["finetune"]["candidate"] = best
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {args.json}")


def finetune_both(
    teacher: torch.nn.Module,
    spec: Any,
    kds: dict[str, Distiller],
    preprocess: Preprocess,
    steps: int,
    device: torch.device,
) -> dict[str, Any]:
    """The student trained by each of ``kds`` (synthetic images only, real ones), scored on test[5000:]."""
    report = load_data(f"npz:{TEST}[5000:]")
    out: dict[str, Any] = {"steps": steps, "data": "test.npz[5000:]"}
    for label, kd in kds.items():
        student = build_student(teacher, spec)
        r = kd.score(student)
        acc = top1(student, report.x, report.y, preprocess, 256, device)
        out[label] = {"test_top1": acc, "seconds": r.seconds}
        print(f"best data-free student after {steps} KD steps on {label} images: {acc:.2f}% on test[5000:]", flush=True)
    return out


def _num(v: float) -> float | None:
    return None if v != v else float(v)  # NaN (e.g. constant scores) -> null in JSON


if __name__ == "__main__":
    main()
