"""Server-rendered plots for the console: a ledger's ε over time as a PNG (matplotlib).

Takes only what the ledger page already shows (ε after each finished run, the cap,
the guarantee in words); never reads the cohort.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from sites.console.pages import CurvePoint


def ledger_png(points: list[CurvePoint], cap: float | None, caption: str) -> bytes:
    """ε spent against time, as a step curve, with the policy's cap as a dashed line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.8))
    ax = fig.subplots()
    if points:
        times = [datetime.fromtimestamp(p.at) for p in points]
        eps = [p.epsilon for p in points]
        ax.step(times, eps, where="post", color="#1f5f8b", marker="o", markersize=3,
                label="ε spent")
        import matplotlib.dates as mdates

        if times[-1] - times[0] < timedelta(hours=1):  # one run: a readable hour around it
            ax.set_xlim(times[0] - timedelta(minutes=30), times[-1] + timedelta(minutes=30))
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center",
                transform=ax.transAxes)
    if cap is not None:
        ax.axhline(cap, color="#b03a2e", linestyle="--", linewidth=1, label=f"cap {cap:g}")
    ax.set_ylabel("ε")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    if caption:
        ax.set_title(caption, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()
