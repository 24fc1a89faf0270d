"""Render ``docs/results.md`` and its PNG plots from the stage outputs of ``bench/results.py``.

Kept apart from the runner so the page can be re-rendered (``--render-only``) without importing
torch or running anything. Every number printed here is read from a stored command output; each
section lists the commands that produced it.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean, median
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUT = DOCS / "results"

Stages = dict[str, dict[str, Any]]


def mega(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}%"


def commands(stage: dict[str, Any]) -> str:
    lines = "\n".join(c["command"] for c in stage["commands"])
    total = stage.get("seconds")
    return f"```\n{lines}\n```\n" + (
        f"({total / 60:.1f} min on {stage.get('machine', 'this machine')})\n" if total else ""
    )


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def scatter(
    path: Path, xs: list[float], ys: list[float], labels: list[str], xlabel: str, ylabel: str, title: str
) -> str:
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(xs, ys, s=24)
    for x, y, label in zip(xs, ys, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def section_teacher(s: Stages) -> str:
    st = s.get("teacher")
    if not st:
        return "## Teacher\n\nnot run yet\n"
    c = st["cost"]
    return (
        "## Teacher: ResNet-56 on CIFAR-10\n\n"
        + table(
            ["data", "images", "top-1"],
            [
                [st["test"]["data"], st["test"]["images"], pct(st["test"]["top1"])],
                [st["report"]["data"], st["report"]["images"], pct(st["report"]["top1"])],
            ],
        )
        + f"\n{mega(c.get('macs'))} MACs, {c.get('params'):,} params"
        + (
            f", latency {c['latency']['median_ms']:.2f} ms ({c['latency']['runtime']}, batch 1, {c['latency']['device']})"
            if c.get("latency")
            else ""
        )
        + (f", peak activation memory {c['memory']['peak_bytes'] / 1e3:.1f} kB" if c.get("memory") else "")
        + ".\n\n"
        + commands(st)
    )


def section_search(s: Stages) -> str:
    st = s.get("search")
    if not st:
        return "## Search at 50 % of the teacher's MACs\n\nnot run yet\n"
    sm = st["summary"]
    secs = [r["seconds"] for r in st["front"] if r.get("seconds")]
    rows = [[r["trial"], pct(r["score"]), mega(r["macs"]), mega(r["params"])] for r in st["front"]]
    return (
        "## Search at 50 % of the teacher's MACs\n\n"
        f"{sm['trials']} trials, {sm['over_budget']} over budget (costed, never trained). Teacher on the selection "
        f"split (test[:2000]): {pct(sm['teacher_score'])} at {mega(sm['teacher_macs'])} MACs. Scores are the 100-step "
        "KD proxy's validation top-1. "
        f"Proxy time per trial on the front: {min(secs):.0f} s at least, {median(secs):.0f} s median (part of the search "
        "shared the 2 cores with other jobs; the command resumes a finished study, so the stage time below is short).\n\n"
        + table(["trial", "proxy val top-1", "MACs", "params"], rows)
        + f"\n![Pareto front]({OUT.name}/{st['plot']})\n\n"
        + commands(st)
    )


def section_recheck(s: Stages) -> str:
    st = s.get("recheck")
    if not st:
        return "## Proxy fidelity: proxy vs longer training\n\nnot run yet\n"
    r = st["recheck"]
    entries = r["entries"]
    png = scatter(
        OUT / "recheck.png",
        [e["proxy_score"] for e in entries],
        [e["long_score"] for e in entries],
        [f"t{e['trial']}" for e in entries],
        f"proxy val top-1 ({r['proxy_steps']} steps)",
        f"val top-1 after {r['steps']} steps",
        f"Kendall tau = {r['tau']}",
    )
    rows = [
        [e["trial"], e["group"], mega(e["macs"]), pct(e["proxy_score"]), pct(e["long_score"]), f"{e['seconds']:.0f} s"]
        for e in sorted(entries, key=lambda e: -e["proxy_score"])
    ]
    return (
        "## Proxy fidelity: proxy vs longer training\n\n"
        f"The {r['top']} best front candidates and {r['top']} random other feasible ones, retrained for {r['steps']} "
        f"steps ({r['steps'] // r['proxy_steps']}x the proxy). **Kendall tau = {r['tau']}** (p = {r['tau_p_value']}), "
        f"Spearman {r['spearman']}; the proxy's winner {'is' if r['same_winner'] else 'is not'} the longer run's winner.\n\n"
        + table(
            ["trial", "group", "MACs", f"proxy ({r['proxy_steps']} steps)", f"long ({r['steps']} steps)", "time"], rows
        )
        + f"\n![proxy vs long]({OUT.name}/{png})\n\n"
        + commands(st)
    )


def section_datafree(s: Stages, stage: str = "datafree", teacher: str = "ResNet-56") -> str:
    """One teacher's data-free proxy against its real-data proxy (stage ``datafree``: DeepInversion on
    ResNet-56; ``datafree_vit``: PSAQ-ViT on the shipped ViT)."""
    title = f"## Data-free proxy vs real-data proxy: {teacher} teacher"
    st = s.get(stage)
    if not st:
        return f"{title}\n\nnot run yet\n"
    d = st["datafree"]
    rows_in = d["rows"]
    syn = d["synthesis"]
    tau = d["datafree_vs_real"]
    tau_rv = d["datafree_train_real_val_vs_real"]
    png = scatter(
        OUT / f"{stage}.png",
        [r["real"] for r in rows_in],
        [r["datafree"] for r in rows_in],
        [f"{r['macs_ratio']:.2f}" for r in rows_in],
        "real-data proxy val top-1 (%)",
        "data-free proxy score (% agreement, synthetic val)",
        f"Kendall tau = {tau['kendall_tau']:.2f}",
    )
    rows = [
        [i, f"{r['macs_ratio']:.2f}", pct(r["real"]), pct(r["datafree"]), pct(r["datafree_train_real_val"])]
        for i, r in enumerate(rows_in)
    ]
    return (
        f"{title}\n\n"
        f"{syn['images']} images synthesised from the teacher alone ({syn['method']}, {d['iters']} iterations per batch "
        f"of {d['synth_batch']}{', ' + d['precision'] if d.get('precision', 'fp32') != 'fp32' else ''}, "
        f"{syn['seconds'] / 60:.1f} min, {syn['seconds_per_iteration']:.2f} s per iteration"
        f"{' when the cached set was made' if syn.get('cache_hit') else ''}; the "
        f"teacher predicts the target class for {100 * syn['target_agreement']:.0f}% of them). The same {len(rows_in)} "
        f"random students under {d['budget']:.0%} of the teacher's MACs are scored by the {d['steps']}-step proxy on "
        f"real CIFAR-10 and on the synthetic set.\n\n"
        f"- data-free proxy vs real-data proxy: **Kendall tau = {tau['kendall_tau']:.2f}** (p = {tau['kendall_p']:.2f}), "
        f"Spearman {tau['spearman_rho']:.2f}\n"
        f"- trained on synthetic images, scored on real validation images vs real-data proxy: Kendall tau = "
        f"{tau_rv['kendall_tau']:.2f} (p = {tau_rv['kendall_p']:.2f})\n\n"
        + table(
            ["candidate", "MACs / teacher", "real-data proxy", "data-free proxy", "data-free trained, real val"], rows
        )
        + f"\n![data-free vs real]({OUT.name}/{png})\n\n"
        + _datafree_finetune(d)
        + stale_teacher(st)
        + commands(st)
    )


def _datafree_finetune(d: dict[str, Any]) -> str:
    """What a user without data ends with: the best data-free student trained longer on synthetic images
    only, next to the same student trained on real images."""
    ft = d.get("finetune")
    if not ft:
        return ""
    synthetic, real = ft["synthetic"]["test_top1"], ft["real"]["test_top1"]
    return (
        f"The best student by the data-free score (candidate {ft['candidate']}) trained {ft['steps']} KD steps on the "
        f"synthetic images only reaches **{pct(synthetic)}** on {ft['data']}; the same student trained the same way "
        f"on {d.get('real_train', d['n'])} real training images reaches {pct(real)} ({synthetic - real:+.1f} points "
        f"without data; the teacher: {pct(d['teacher_real_val_top1'])} on the real validation images).\n\n"
    )


def section_resolution(s: Stages) -> str:
    st = s.get("resolution")
    if not st:
        return "## Budgets, resolution, latency and memory\n\nnot run yet\n"
    rows = []
    for budget, r in st["best"].items():
        rows.append(
            [
                budget,
                r["trial"],
                r.get("resolution") or 32,
                pct(r["score"]),
                mega(r["macs"]),
                f"{r['latency_ms']:.2f} ms" if r.get("latency_ms") else "-",
                f"{r['memory_bytes'] / 1e3:.1f} kB" if r.get("memory_bytes") else "-",
            ]
        )
    front = st["latency_front"]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for res in sorted({r.get("resolution") or 32 for r in front}):
        pts = [r for r in front if (r.get("resolution") or 32) == res]
        ax.scatter([r["latency_ms"] for r in pts], [r["score"] for r in pts], label=f"{res} px")
    ax.set_xlabel("latency (ms, batch 1)")
    ax.set_ylabel("proxy val top-1 (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "latency_front.png")
    plt.close(fig)
    device = next((r.get("latency_device") for r in front if r.get("latency_device")), "-")
    return (
        "## Budgets, resolution, latency and memory\n\n"
        "Input resolution (24, 28 or 32 px for the student; the teacher keeps 32 px) searched with the structure. "
        f"Latency and peak activation memory are measured for every feasible candidate on: {device}. Two readings: "
        "peak activation memory depends on the resolution only, because the widest tensor is the (unsearched) stem's "
        "output at full resolution; and this stage ran while other stages shared the 2 cores, so single latencies "
        "are noisy (compare within the table, not against a quiet machine).\n\n"
        + table(["budget", "trial", "resolution", "proxy val top-1", "MACs", "latency", "peak act. memory"], rows)
        + "\n![latency front](results/latency_front.png)\n\n"
        + commands(st)
    )


def section_vit(s: Stages) -> str:
    st = s.get("vit")
    if not st:
        return "## CNN teacher -> ViT student\n\nnot run yet\n"
    sm = st["summary"]
    rows = [[r["trial"], pct(r["score"]), mega(r["macs"]), mega(r["params"])] for r in sm["pareto"]]
    return (
        "## CNN teacher -> ViT student\n\n"
        f"ResNet-56 distilled into a ViT (patch 4, width 128) whose depth, heads and MLP width are searched under 50 % "
        f"of the teacher's MACs; the ViT cannot inherit CNN weights and learns from logits from scratch. "
        f"{sm['trials']} trials; teacher {pct(sm['teacher_score'])} on the same split.\n\n"
        + table(["trial", "proxy val top-1", "MACs", "params"], rows)
        + "\n"
        + commands(st)
    )


def section_finetune(s: Stages) -> str:
    st = s.get("finetune")
    if not st:
        return "## Fine-tuning the chosen student\n\nnot run yet\n"
    f = st["finetune"]
    b = st["best"]
    return (
        "## Fine-tuning the chosen student\n\n"
        f"The best student within 50 % of the teacher's MACs (trial {b['trial']}, {mega(b['macs'])} MACs, "
        f"proxy {pct(b['score'])}) trained on the full 50k training set with KD for {f.get('epochs')} epochs "
        f"on {f.get('device', 'CPU')}:\n\n"
        + table(
            ["model", "test[5000:] top-1"],
            [["student", pct(f.get("test_top1"))], ["teacher ResNet-56", pct(f.get("teacher_top1"))]],
        )
        + f"\nAn epoch took {f['kd']['seconds_per_epoch'] / 60:.1f} min here. Then the student, with a new 10-class head, "
        f"was fine-tuned on scikit-learn's digits (8x8 grey images resized to 32 px; downstream task): "
        f"**{pct((f.get('downstream') or {}).get('test_top1'))}** on the held-out digits.\n\n" + commands(st)
    )


def _vs_rows(r: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            x["name"],
            mega(x["macs"]),
            f"{100 * x['macs'] / r['max_macs']:.1f}%",
            f"{x['params'] / 1e3:.1f}k",
            pct(x.get("proxy")),
            pct(x["val"]),
            f"**{x['test']:.2f}%**",
        ]
        for x in r["rows"]
    ]


def section_vs_pruning(s: Stages) -> str:
    st = s.get("vs_pruning")
    if not st:
        return "## The search against structured pruning\n\nnot run yet\n"
    parts = [
        "## The search against structured pruning at 50 % MACs\n\n"
        "Every study scores its baselines first: `uniform` width scaling to the budget, `global_magnitude` "
        "(group-L2 channel ranking across all blocks, Torch-Pruning's global recipe, put on the width grid) and "
        "`depth` (stage-uniform block dropping). The best *searched* student within the budget (not a baseline), "
        "the baselines and channel-level global magnitude pruning (off the grid) then get the **same** short KD: "
        "300 steps of batch 128 on train[:10000], no augmentation, teacher logits precomputed, KL at T=4 times "
        "T^2, SGD Nesterov, OneCycle to lr 0.05 with 15% warm-up, seed 0. Structures were selected on "
        "test[:2000] (the proxy); test[5000:] was never looked at before this table.\n"
    ]
    for teacher, r in ((k, v) for k, v in st.items() if k.startswith("cifar_")):
        checks = "; ".join(f"{what}: {'yes' if ok else '**no**'}" for what, ok in r["checks"].items())
        parts.append(
            f"\n### {teacher}, budget {r['budget']} = {mega(r['max_macs'])} MACs\n\n"
            f"Search: {r['trials']} trials in {r['search_minutes']:.1f} min, {r['in_window']} of them within "
            f"[0.9, 1.0] x budget.\n\n"
            + table(
                ["student", "MACs", "of budget", "params", "proxy (test[:2000])", "test[:5000]", "test[5000:]"],
                _vs_rows(r),
            )
            + "\nGain of the searched student on test[5000:]: "
            + ", ".join(f"{g:+.2f} vs {name}" for name, g in r["gains"].items())
            + f".\n\nAcceptance: {checks}.\n"
        )
    return "".join(parts) + "\n" + commands(st)


def section_prescreen(s: Stages) -> str:
    st = s.get("prescreen")
    if not st:
        return "## Pre-screen\n\nnot run yet\n"
    p = st["prescreen"]
    rows = [
        [name, p[name]["n"], p[name]["tau"], f"{p[name]['p']:.2g}", p[name]["spearman"]]
        for name in ("all", "at budget")
        if name in p
    ]
    png = scatter(
        OUT / "prescreen.png",
        [r["quick"] for r in p["rows"]],
        [r["proxy"] for r in p["rows"]],
        [f"t{r['trial']}" for r in p["rows"]],
        "top-1 after BN recalibration only (512 images)",
        "proxy val top-1 (100 KD steps)",
        f"pre-screen vs proxy, Kendall tau = {p['all']['tau']}",
    )
    return (
        "## Pre-screen: BatchNorm-recalibrated accuracy vs the KD proxy\n\n"
        f"Every trained trial of the ResNet-56 study above, scored without training (EagleEye: top-1 on 512 "
        f"validation images after BatchNorm recalibration on 4 batches): {p['per_candidate_s']:.2f} s per candidate "
        f"against a median proxy trial of {p['median_proxy_s']:.1f} s.\n\n"
        + table(["trials", "n", "Kendall tau", "p", "Spearman"], rows)
        + f"\n![pre-screen vs proxy]({OUT.name}/{png})\n\n"
        + _prescreen_effect(st)
        + commands(st)
    )


def _prescreen_effect(st: dict[str, Any]) -> str:
    """The same vs_pruning search with and without the pre-screen, when both were run."""
    runs = st.get("searches")
    if not runs:
        return ""
    rows = []
    for label, r in runs.items():
        best = r["rows"][1]
        rows.append(
            [
                label,
                f"{r['search_minutes']:.1f} min",
                r["in_window"],
                pct(best.get("proxy")),
                pct(best["test"]),
                pct(next(x["proxy"] for x in r["rows"] if x["name"].startswith("uniform"))),
            ]
        )
    return (
        "The ResNet-56 search run with and without it (`prescreen: {candidates: 200, keep: 0.1}`; same seed; both "
        "runs shared the 2 cores with test runs for part of the time, so their times are upper bounds):\n\n"
        + table(
            [
                "search",
                "time",
                "trials in [0.9, 1] x budget",
                "best searched proxy",
                "its test[5000:] after the 300-step KD",
                "uniform baseline proxy",
            ],
            rows,
        )
        + "\nThe pre-screen raises the best searched proxy score but not the student's accuracy after the reference "
        "KD, and the front's top is the uniform baseline either way: it stays off by default "
        "(`prescreen.candidates: 0`).\n\n"
    )


def section_trial_cost(s: Stages) -> str:
    st = s.get("trial_cost")
    if not st:
        return "## What a trial costs\n\nnot run yet\n"
    t = st["trial_cost"]
    return (
        "## What a trial costs beyond its training steps\n\n"
        f"{t['trials']} trials of the ResNet-56 study in one process: a whole trial (proposal, build, fvcore count, "
        "latency and memory measurement, BatchNorm recalibration, proxy, validation, artifact, storage) against the "
        "same students' optimisation steps alone on the cached teacher outputs, and against the same steps with the "
        "teacher run online.\n\n"
        + table(
            ["ratio", "value", "goal"],
            [
                ["trial / steps", f"{t['trial_over_steps']:.2f}", "<= 1.2"],
                ["online teacher / cached", f"{t['online_over_cached']:.2f}x", ">= 1.5x"],
            ],
        )
        + f"\nMedian trial: {t['median_trial_s']:.1f} s.\n\n"
        + commands(st)
    )


def section_reliability(s: Stages) -> str:
    st = s.get("reliability")
    if not st:
        return "## Reliability\n\nnot run yet\n"
    f = st["faults"]
    sweep = st["sweep"]
    return (
        "## Reliability\n\n"
        f"One {f['trials']}-trial digits search ({f['steps']} proxy steps a trial) on a real PostgreSQL with "
        f"{f['workers']} workers, through the REST API, while five faults hit it in turn "
        "(`bench/faults.py`).\n\n"
        + table(
            ["fault", "what happened", "trials lost"],
            [[r["fault"], r["what"], "?" if r["lost"] is None else r["lost"]] for r in f["faults"]],
        )
        + f"\nThe search ended **{f['status']}** with {f['complete']}/{f['trials']} complete trials: "
        f"{f['failed_retried']} failed trials retried, {f['trained_twice']} structures trained twice, "
        f"{f['requeued']} job(s) taken back from a silent worker (1 expected: the kill -9), {f['lost']} trials lost.\n\n"
        "Bad input, through the real app and PostgreSQL: the hand-written list of hostile specs and paths "
        "(`tests/service/test_hostile_sweep.py`) must each get a 4xx with a one-line JSON `detail`; schemathesis "
        "sends 30 generated requests per operation of the OpenAPI document (`tests/service/test_openapi_fuzz.py`; "
        "valid ones get a 2xx). No response may hold a secret (database URL, host, password, stack trace), and "
        "`/healthz` must still answer after each.\n\n"
        + table(
            ["sweep", "requests", "4xx", "5xx", "secrets leaked", "API crashes"],
            [
                [name, c["requests"], c["4xx"], c["5xx"], c["secrets"], c["down"]]
                for name, c in sorted(sweep.items(), reverse=True)
            ],
        )
        + "\n"
        + commands(st)
    )


def section_detection(s: Stages) -> str:
    st = s.get("detection")
    head = "## Detection: FCOS on a CIFAR-10 mosaic\n\n"
    if not st:
        return head + "not run yet\n"
    d = st["detection"]
    t, z = d["teacher"], d["sizes"]
    front = [
        [f["trial"], f["baseline"] or "searched", mega(f["macs"]), pct(f["map"]), pct(f["map50"])] for f in d["front"]
    ]
    compared = [
        [
            f"{name} (trial {c['trial']})",
            mega(c["macs"]),
            f"{100 * c['budget_used']:.0f}%",
            pct(c["short_kd_map"]),
            pct(c["finetuned_map"]),
            pct(c["finetuned_map50"]),
        ]
        for name, c in d["compared"].items()
    ]
    r = d["recheck"]
    phases = ", ".join(f"{k} {v / 60:.1f} min" for k, v in d["seconds"].items())

    def gain(key: str) -> float:
        return d["compared"]["searched"][key] - d["compared"]["uniform"][key]

    return (
        head + f"{z['canvas']} px canvases of CIFAR-10 objects (1-4 each; {z['train']} training, {z['val']} validation "
        f"canvases), an FCOS detector over the shared CIFAR ResNet-20 trained {z['teacher_epochs']} epochs: "
        f"**teacher mAP {pct(t['map'])}** (mAP@.5 {pct(t['map50'])}) at {mega(t['macs'])} MACs. "
        f"{d['trials']} trials of {z['steps']} proxy steps under 50% of its MACs ({mega(d['max_macs'])}).\n\n"
        + table(["trial", "kind", "MACs", "mAP", "mAP@.5"], front)
        + f"\nThe best searched student within the budget next to uniform width scaling at the same budget, after the "
        f"search's short KD and after a {z['epochs']}-epoch fine-tune (detection KD + ground-truth loss):\n\n"
        + table(["student", "MACs", "of budget", "short KD mAP", "fine-tuned mAP", "fine-tuned mAP@.5"], compared)
        + f"\nThe searched student's gain over uniform width scaling: {gain('short_kd_map'):+.2f} mAP after the short KD, "
        f"{gain('finetuned_map'):+.2f} after the fine-tune.\n"
        + f"\nProxy fidelity: {len(r['entries'])} students retrained {r['steps']} steps, **Kendall tau = {r['tau']}** "
        f"(p = {r['tau_p_value']}). Phases: {phases}.\n\n" + commands(st)
    )


def section_tradeoffs(s: Stages) -> str:
    st = s.get("tradeoffs")
    head = "## Trade-offs: CNN and ViT teachers and students, budgets, resolutions\n\n"
    if not st:
        return head + "not run yet\n"
    t = st["tradeoffs"]
    rows, done = [], []
    for c in t["cells"]:
        cell = [c["teacher"], c["family"], c["budget"], f"{c['resolution']} px"]
        if "skipped" in c:
            rows.append([*cell, f"skipped: {c['skipped']}", "", "", "", ""])
            continue
        b = c["best"]
        done.append(c)
        latency = "-" if b["latency_ms"] is None else f"{b['latency_ms']:.2f} ms"
        memory = "-" if b["memory_bytes"] is None else f"{b['memory_bytes'] / 1e3:.0f} kB"
        rows.append([*cell, pct(b["proxy_top1"]), pct(b["finetuned_top1"]), mega(b["macs"]), latency, memory])
    z = t["sizes"]
    text = (
        head + f"Each row is its own search ({z['trials']} trials of {z['steps']} proxy steps, batch {z['batch']}"
        f"{', ' + z['precision'] if z.get('precision', 'fp32') != 'fp32' else ''}, "
        f"{z['train']} training images, selected on test[:{z['val']}]); its best feasible student by proxy top-1 is "
        f"fine-tuned for {z['epochs']} epoch(s) and tested on test[5000:{5000 + z['test']}]. A student of the "
        "teacher's family inherits its weights; one of the other family learns from its logits from scratch. "
        f"The fine-tune continues at the proxy's optimizer and rate ({_finetune_rates(done)}). "
        f"Budgets are fractions of each teacher's own MACs ({_teacher_macs(done)} on the same test images), so a "
        "percentage is a different absolute budget under each teacher, and the two teachers are not equally good. "
        "Latency and peak activation memory: PyTorch eager on the CPU, batch 1, one thread "
        f"({next((c['best']['latency_device'] for c in done if c['best']['latency_device']), '-')}).\n\n"
        + table(
            [
                "teacher",
                "student",
                "budget",
                "resolution",
                "proxy top-1",
                "fine-tuned",
                "MACs",
                "latency",
                "peak memory",
            ],
            rows,
        )
    )
    if done:
        text += "\n" + _tradeoff_winners(done) + "\n\n![trade-offs](results/tradeoffs.png)\n\n"
        _tradeoff_plot(done, OUT / "tradeoffs.png")
    # the cells ran in several sittings (the bench resumes finished ones): time is theirs, not the last run's
    cell_seconds = sum(sum(c["seconds"].values()) for c in done if c.get("seconds"))
    return text + stale_teacher(st) + commands({**st, "seconds": cell_seconds or st.get("seconds")})


def _teacher_macs(cells: list[dict[str, Any]]) -> str:
    """``ResNet-56: 126.6M MACs, 93.38% top-1; ViT: ...``: each teacher's MACs and test top-1 as its cells recorded them."""
    teachers = {c["teacher"]: c for c in cells if c.get("teacher_macs")}
    return (
        "; ".join(
            f"{name}: {mega(c['teacher_macs'])} MACs, {pct(c['best']['teacher_top1'])} top-1"
            for name, c in teachers.items()
        )
        or "not recorded"
    )


def _finetune_rates(cells: list[dict[str, Any]]) -> str:
    """The fine-tunes' optimizers and rates, e.g. ``sgd 0.003, adamw 0.0005`` (cells before format 2 record none)."""
    rates = sorted(
        {(c["best"]["finetune_optimizer"], c["best"]["finetune_lr"]) for c in cells if "finetune_lr" in c["best"]}
    )
    return ", ".join(f"{opt} {lr:g}" for opt, lr in rates) or "not recorded"


def _tradeoff_winners(cells: list[dict[str, Any]]) -> str:
    """Which teacher -> student pairing has the best fine-tuned top-1 at each budget and resolution."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["budget"], c["resolution"]), []).append(c)
    parts = []
    for (budget, res), group in sorted(groups.items()):
        ranked = sorted(group, key=lambda c: c["best"]["finetuned_top1"] or 0.0, reverse=True)
        w = ranked[0]
        margin = (
            ""
            if len(ranked) < 2
            else f", {w['best']['finetuned_top1'] - (ranked[1]['best']['finetuned_top1'] or 0):.1f} points ahead"
        )
        parts.append(
            f"{budget} at {res} px: {w['teacher']} -> {w['family']} ({pct(w['best']['finetuned_top1'])}{margin})"
        )
    text = "Best fine-tuned pairing per budget and resolution (read from the table): " + "; ".join(parts) + "."
    return text + _family_gap(cells) + _resolution_gap(cells)


def _tuned(cells: list[dict[str, Any]], **key: Any) -> float | None:
    """The fine-tuned top-1 of the one cell matching ``key`` (``None`` when absent)."""
    hits = [c for c in cells if all(c[k] == v for k, v in key.items())]
    return hits[0]["best"]["finetuned_top1"] if hits else None


def _family_gap(cells: list[dict[str, Any]]) -> str:
    """How far a student of the teacher's own family (inherited weights) is ahead of the other family's."""
    own = {"ResNet-56": "CNN", "ViT": "ViT"}
    gaps = []
    for c in cells:
        if own.get(c["teacher"]) != c["family"]:
            continue
        other = "ViT" if c["family"] == "CNN" else "CNN"
        rival = _tuned(cells, teacher=c["teacher"], family=other, budget=c["budget"], resolution=c["resolution"])
        if rival is not None and c["best"]["finetuned_top1"] is not None:
            gaps.append(c["best"]["finetuned_top1"] - rival)
    if not gaps:
        return ""
    return (
        f" A student of the teacher's own family, which inherits its weights, is {min(gaps):+.1f} to "
        f"{max(gaps):+.1f} points ahead of the other family's under the same teacher, budget and resolution "
        f"({len(gaps)} cells)."
    )


def _resolution_gap(cells: list[dict[str, Any]]) -> str:
    """What 32 px buys over 24 px for the same pairing and budget."""
    gaps = []
    for c in cells:
        if c["resolution"] != 32 or c["best"]["finetuned_top1"] is None:
            continue
        low = _tuned(cells, teacher=c["teacher"], family=c["family"], budget=c["budget"], resolution=24)
        if low is not None:
            gaps.append(c["best"]["finetuned_top1"] - low)
    if not gaps:
        return ""
    return f" 32 px against 24 px for the same pairing and budget: {min(gaps):+.1f} to {max(gaps):+.1f} points ({len(gaps)} pairs)."


def _tradeoff_plot(cells: list[dict[str, Any]], path: Path) -> None:
    """Fine-tuned top-1 against measured latency, one colour per pairing, one marker per resolution."""
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    pairings = sorted({(c["teacher"], c["family"]) for c in cells})
    markers = {24: "s", 32: "o"}
    for i, (teacher, family) in enumerate(pairings):
        for res, marker in markers.items():
            pts = [c for c in cells if (c["teacher"], c["family"], c["resolution"]) == (teacher, family, res)]
            pts = [c for c in pts if c["best"]["latency_ms"] is not None and c["best"]["finetuned_top1"] is not None]
            if pts:
                ax.scatter(
                    [c["best"]["latency_ms"] for c in pts],
                    [c["best"]["finetuned_top1"] for c in pts],
                    color=f"C{i}",
                    marker=marker,
                    label=f"{teacher} -> {family}, {res} px",
                )
    ax.set_xlabel("latency (ms, CPU, batch 1, 1 thread)")
    ax.set_ylabel("fine-tuned top-1 (%)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: 8 entries would cover points
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def teacher_views(recipe: dict[str, Any]) -> str:
    """How a teach recipe ran the model it distils from: per batch, or on cached views."""
    n = recipe["teacher_views"]
    return f"{n} cached views" if n else "the teacher run on every augmented batch"


def section_vit_teacher(s: Stages) -> str:
    st = s.get("vit_teacher")
    if not st:
        return "## The ViT teacher\n\nnot run yet\n"
    side, c = st["sidecar"], st["cost"]
    r = side["recipe"]
    curve = ", ".join(f"{h['val_top1']:.1f}" for h in side["history"])
    views = teacher_views(r)
    arch = (
        ", ".join(f"{k} {v}" for k, v in side["kwargs"].items())
        or "its registered defaults: conv stem, patch 4 at 32 px, width 192, 6 blocks x 3 heads"
    )
    return (
        "## The ViT teacher\n\n"
        f"`teachers/cifar_vit.safetensors`: `{side['model']}` ({arch}), {side['params']:,} params in fp16, "
        f"{mega(c.get('macs'))} MACs"
        + (f", latency {c['latency']['median_ms']:.2f} ms ({c['latency']['device']})" if c.get("latency") else "")
        + (f", peak activation memory {c['memory']['peak_bytes'] / 1e3:.1f} kB" if c.get("memory") else "")
        + f". Distilled from `{r['distill_from']['model']}` ({r['distillation']} KD at T={r['temperature']:g}, "
        f"weight {r['alpha']:g}, {views}) for {r['epochs']} epochs in {side['train_seconds'] / 3600:.2f} h on this CPU "
        f"({side['images_per_s']:.0f} images/s, {r['precision']}), seed {side['seed']}. Weights selected on "
        f"{side['val']['data']} (epoch {side['best_epoch']:g}: {pct(side['val']['top1'])}).\n\n"
        + table(
            ["data", "images", "top-1 (sidecar)", "top-1 (`structsearch eval` on the file)"],
            [[st["report"]["data"], st["report"]["images"], pct(side["test"]["top1"]), pct(st["report"]["top1"])]],
        )
        + f"\nValidation top-1 after each epoch: {curve}.\n\nTrained by `{side['command']}`.\n\n"
        + commands(st)
    )


def inherit_table(v: dict[str, Any]) -> str:
    """``bench/inherit.py``'s students (inherited, scratch, the gap, with feature KD) and per-budget summary."""
    rows = [
        [
            budget,
            row["trial"],
            row["baseline"] or "searched",
            mega(row["macs"]),
            pct(row["inherited"]),
            pct(row["scratch"]),
            f"{row['inherited'] - row['scratch']:+.2f}",
            pct(row["feature_kd"]),
        ]
        for budget, res in v["budgets"].items()
        for row in res["students"]
    ]
    summary = "; ".join(
        f"{budget}: inherited - scratch min {res['min_gap']:+.2f}, mean {res['mean_gap']:+.2f} points, "
        f"feature KD {res['mean_feature_kd_change']:+.2f} points on average"
        for budget, res in v["budgets"].items()
    )
    return (
        table(["budget", "trial", "student", "MACs", "inherited", "scratch", "gap", "+ feature KD"], rows)
        + f"\n{summary}.\n\n"
    )


def section_vit_inherit(s: Stages) -> str:
    st = s.get("vit_inherit")
    if not st:
        return "## ViT -> ViT: inherited weights against training from scratch\n\nnot run yet\n"
    return (
        "## ViT -> ViT: inherited weights against training from scratch\n\n"
        "A search of the ViT teacher's depth, heads and MLP width under each budget (the study's baselines, then TPE), "
        "students inheriting its weights; every trained student trained again by the same proxy from a fresh "
        "initialisation (AdamW 1e-3 against 5e-4 inherited) and, inherited, with ViT feature KD (token MSE + "
        "attention KL) added. Proxy val top-1 on test[:2000].\n\n"
        + inherit_table(st["vit_inherit"])
        + (f"Note: {st['note']}.\n\n" if st.get("note") else "")
        + stale_teacher(st)
        + commands(st)
    )


def section_family_teacher(s: Stages, stage: str, title: str, searched: str) -> str:
    """A teacher of another family trained by its recipe, then searched with inherited weights against scratch
    (``bench/results.py``'s ``FAMILY_TEACHERS`` stages); ``searched`` says what the space varies."""
    family = title.split(" ")[0]
    article = "an" if family[0] in "AEIOU" else "a"
    title = f"## {title}: {article} {family} teacher, inherited weights against training from scratch\n\n"
    st = s.get(stage)
    if not st:
        return title + "not run yet\n"
    side = st["sidecar"]
    r = side["recipe"]
    views = teacher_views(r)
    return (
        title + f"The teacher: `{side['model']}` ({side['params']:,} params) trained by `{side['command']}` "
        f"(distilled from `{r['distill_from']['model']}`, {r['distillation']} KD at T={r['temperature']:g}, weight "
        f"{r['alpha']:g}, {views}; {r['epochs']} epochs in {side['train_seconds'] / 60:.1f} min on this CPU, "
        f"{side['images_per_s']:.0f} images/s, seed {side['seed']}): {pct(side['val']['top1'])} on {side['val']['data']} "
        f"(epoch {side['best_epoch']:g}), **{pct(side['test']['top1'])} on {side['test']['data']}**. It is not shipped; "
        "the stage trains it into `$STRUCTSEARCH_HOME`.\n\n"
        f"Then a search of its {searched} under each budget (the study's baselines, then "
        "TPE), students inheriting its weights; every trained student trained again by the same proxy from a fresh "
        f"`{side['model']}` (AdamW 1e-3 against 5e-4 inherited) and, inherited, with feature KD (MSE on the four stage "
        "outputs) added. Proxy val top-1 on test[:2000].\n\n" + inherit_table(st["inherit"]) + commands(st)
    )


def section_feature_kd(s: Stages) -> str:
    title = "## ViT feature KD: in the proxy, in the fine-tune\n\n"
    st = s.get("feature_kd")
    if not st:
        return title + "not run yet\n"
    f = st["feature_kd"]
    students, summ = f["students"], f["summary"]
    rows = [
        [
            "feature KD" if r["proxy_feature_kd"] else "logit KD",
            r["trial"],
            r["baseline"] or "searched",
            mega(r["macs"]),
            pct(r["proxy"]),
            pct(r["no-feature-kd"]),
            pct(r["feature-kd"]),
            f"{r['feature-kd'] - r['no-feature-kd']:+.2f}",
        ]
        for r in students
    ]
    changes = summ["feature_kd_finetune_minus_logit"]
    best = "; ".join(
        f"{'feature-KD' if b['proxy_feature_kd'] else 'logit-KD'} proxy, fine-tuned with "
        f"{'feature KD' if b['recipe'] == 'feature-kd' else 'logit KD'}: trial {b['trial']}, {pct(b['top1'])} "
        f"at {b['macs_share']:.0%} of the MACs"
        for b in summ["best"]
    )
    ft_seconds = {recipe: sum(r[f"{recipe}_seconds"] for r in students) for recipe in ("no-feature-kd", "feature-kd")}
    search = f["search_trial_seconds"]
    return (
        title
        + f"Two searches of `studies/cifar10_vit.yaml` ({f['args']['trials']} trials: the 3 baselines, then TPE), "
        "identical but for `proxy.feature_kd`. Each study's students worth a look (its front within 5 proxy points "
        "of its best, and its best searched student) are then fine-tuned by **both** recipes: "
        f"{f['args']['epochs']} epoch(s) over the 50,000 training images, batch 64, AdamW 5e-4, logit KD with "
        "and without ViT feature KD (token MSE + attention KL), scored on test[5000:]. Proxy: val top-1 on "
        "test[:2000].\n\n"
        + table(
            ["proxy", "trial", "student", "MACs", "proxy score", "fine-tuned, logit KD", "+ feature KD", "change"],
            rows,
        )
        + f"\nFeature KD in the fine-tune: {fmean(changes):+.2f} points on average "
        f"({min(changes):+.2f} to {max(changes):+.2f}) over {len(changes)} students, at "
        f"{ft_seconds['feature-kd'] / ft_seconds['no-feature-kd']:.2f}x the fine-tune's time. Best student of each "
        f"proxy after the same fine-tune: {best}.\n\n"
        f"Seconds of the searches' trials: logit KD {search['feature_kd=False']:.0f}, feature KD "
        f"{search['feature_kd=True']:.0f}; of the fine-tunes' training: logit KD {ft_seconds['no-feature-kd']:.0f}, "
        f"feature KD {ft_seconds['feature-kd']:.0f}.\n\n"
        + stale_teacher(st)
        + commands({**st, "seconds": None})  # a rerun re-reads finished searches and fine-tunes: see the seconds above
    )


def stale_teacher(st: dict[str, Any]) -> str:
    """A warning when a stage ran with another ViT teacher file than the one shipped now."""
    from structsearch.models import file_hash

    ran_with, shipped = st.get("teacher_file"), ROOT / "teachers" / "cifar_vit.safetensors"
    if ran_with is None or not shipped.is_file() or file_hash(shipped) == ran_with:
        return ""
    return (
        f"**Stale:** measured with an earlier ViT teacher file (sha256 {ran_with}...), not the one shipped now; "
        "rerun this stage (`bench/results.py --force STAGE`).\n\n"
    )


def render(stages: Stages) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    parts = [
        "# Results: ResNet-56, ViT, ConvNeXt and RegNet teachers on CIFAR-10\n",
        "Regenerate with `.venv/bin/python bench/results.py` (stage outputs are kept in `docs/results/*.json`; "
        "`--force STAGE` reruns one). All runs on a 2-core CPU (no GPU was available), so the search proxies are "
        "100 steps of batch 64 on 10k training images and the fine-tune is one epoch; the teacher's outputs are "
        "cached once per study. Candidates are selected on test[:2000]; test[5000:] is only used for the final "
        "fine-tuned accuracy.\n",
        section_teacher(stages),
        section_search(stages),
        section_recheck(stages),
        section_datafree(stages),
        section_datafree(stages, "datafree_vit", "ViT"),
        section_resolution(stages),
        section_vit(stages),
        section_finetune(stages),
        section_vs_pruning(stages),
        section_prescreen(stages),
        section_trial_cost(stages),
        section_reliability(stages),
        section_detection(stages),
        section_tradeoffs(stages),
        section_vit_teacher(stages),
        section_vit_inherit(stages),
        section_feature_kd(stages),
        section_family_teacher(stages, "convnext", "ConvNeXt -> ConvNeXt", "depth per stage and MLP width per block"),
        section_family_teacher(
            stages, "regnet", "RegNet -> RegNet", "depth per stage and bottleneck width per block (whole groups)"
        ),
        section_family_teacher(
            stages,
            "efficientvit",
            "EfficientViT -> EfficientViT",
            "depth per stage and MBConv expansion width per block (attention blocks' local MBConv included)",
        ),
    ]
    page = DOCS / "results.md"
    page.write_text("\n".join(parts))
    return page
