"""Drawing a study's front: every trained candidate, the Pareto front, over-budget ones greyed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from structsearch.errors import StructsearchError
from structsearch.search.results import ScoredRecord, TrialRecord, scored

#: Cost axis -> (divisor, axis label).
_AXES: dict[str, tuple[float, str]] = {
    "macs": (1e6, "MMACs"),
    "params": (1e6, "M params"),
    "latency": (1.0, "latency (ms, median)"),
    "memory": (1e6, "peak activation memory (MB)"),
}


def plot_front(
    records: list[TrialRecord], front: Sequence[ScoredRecord], cost: str, path: str | Path, title: str = ""
) -> Path:
    """Write a PNG (matplotlib) or an interactive HTML (plotly, when installed) of the front."""
    p = Path(path)
    pts = [r for r in scored(records) if r.cost(cost) is not None]
    scale, label = _AXES[cost]

    def points(rs: Sequence[ScoredRecord]) -> tuple[list[float], list[float]]:
        """(cost / scale, score) of the records measured on the cost axis, as x and y lists."""
        pairs = [(c / scale, r.score) for r in rs if (c := r.cost(cost)) is not None]
        return [x for x, _ in pairs], [y for _, y in pairs]

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
        for rs, mode, name in ((pts, "markers", "candidates"), (front, "lines+markers", "Pareto front")):
            x, y = points(rs)
            fig.add_scatter(x=x, y=y, mode=mode, name=name, text=[f"trial {r.trial}" for r in rs])
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
    ax.scatter(*points(feasible), s=16, alpha=0.6, label="candidates")
    if over:
        ax.scatter(*points(over), s=16, c="lightgrey", label="over budget")
    ax.plot(*points(front), "o-", c="tab:red", label="Pareto front")
    ax.set_xlabel(label)
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(p)
    plt.close(fig)
    return p
