"""Drawing a study's front: every trained candidate, the Pareto front, over-budget ones greyed."""

from __future__ import annotations

from pathlib import Path

from structsearch.errors import StructsearchError
from structsearch.search.results import TrialRecord, scored

#: Cost axis -> (divisor, axis label).
_AXES: dict[str, tuple[float, str]] = {
    "macs": (1e6, "MMACs"),
    "params": (1e6, "M params"),
    "latency": (1.0, "latency (ms, median)"),
    "memory": (1e6, "peak activation memory (MB)"),
}


def plot_front(
    records: list[TrialRecord], front: list[TrialRecord], cost: str, path: str | Path, title: str = ""
) -> Path:
    """Write a PNG (matplotlib) or an interactive HTML (plotly, when installed) of the front."""
    p = Path(path)
    pts = [r for r in scored(records) if r.cost(cost) is not None]
    scale, label = _AXES[cost]
    xs = lambda rs: [r.cost(cost) / scale for r in rs]  # noqa: E731
    devices = sorted(
        {
            d
            for r in pts
            if (d := r.latency_device if cost == "latency" else r.memory_device if cost == "memory" else None)
        }
    )
    if devices:  # a measured axis means nothing without the device it was measured on
        label += f" on {', '.join(devices)}"
    if p.suffix == ".html":
        try:
            import plotly.graph_objects as go
        except ImportError:
            raise StructsearchError("HTML plots need plotly (pip install plotly); or use a .png path") from None
        fig = go.Figure()
        fig.add_scatter(
            x=xs(pts),
            y=[r.score for r in pts],
            mode="markers",
            name="candidates",
            text=[f"trial {r.trial}" for r in pts],
        )
        fig.add_scatter(
            x=xs(front),
            y=[r.score for r in front],
            mode="lines+markers",
            name="Pareto front",
            text=[f"trial {r.trial}" for r in front],
        )
        fig.update_layout(title=title, xaxis_title=label, yaxis_title="val top-1 (%)")
        fig.write_html(str(p))
        return p
    if p.suffix != ".png":
        raise StructsearchError(f"--plot must end in .png or .html, got '{p.name}'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    feasible = [r for r in pts if r.feasible]
    over = [r for r in pts if not r.feasible]
    ax.scatter(xs(feasible), [r.score for r in feasible], s=16, alpha=0.6, label="candidates")
    if over:
        ax.scatter(xs(over), [r.score for r in over], s=16, c="lightgrey", label="over budget")
    ax.plot(xs(front), [r.score for r in front], "o-", c="tab:red", label="Pareto front")
    ax.set_xlabel(label)
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p
