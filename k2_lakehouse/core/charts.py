"""A small picture of a gold day: the close of the busiest series over the day, as PNG bytes.

Pure: Arrow rows in, PNG bytes out. Drawn with matplotlib's Agg canvas directly (no pyplot, no global
backend, no display), so it runs in any process and thread. Prices are converted to floats only to be
drawn: the tables themselves never hold a binary float.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc

MAX_SERIES = 4  # the busiest (exchange, symbol) series by quote volume; more lines would not be readable
_SIZE_INCHES, _DPI = (6.4, 3.0), 80  # 512 x 240 pixels: tens of KB


def bars_chart_png(bars: pa.Table, title: str, *, max_series: int = MAX_SERIES) -> bytes | None:
    """The day of the busiest series, as the change in % from the day's first open (so BTC and DOGE share
    one axis): the close of every bar over the day, or, when each series has one bar (1d), the day's
    change as one bar per series. A series is an (exchange, symbol), the busiest by quote volume, one per
    base asset (BTC/USD on Kraken and BTC/USDT on Binance move together). None when the day has no bars.

    `bars` has the gold contract's columns exchange, symbol, window_start, open, close, quote_volume.
    """
    if bars.num_rows == 0:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE_INCHES, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series = [(s, _series(bars, s)) for s in _busiest(bars, max_series)]
    if all(len(rows) == 1 for _, rows in series):  # one bar per series: the day's change
        labels = [f"{s['symbol']}\n{s['exchange']}" for s, _ in series]
        change = [_change(rows)[-1] for _, rows in series]
        ax.bar(labels, change, color=["#2e7d32" if c >= 0 else "#c62828" for c in change])
        ax.tick_params(axis="x", labelsize=7)
    else:
        for s, rows in series:
            ax.plot(rows["window_start"].to_pylist(), _change(rows), linewidth=1.2, label=f"{s['symbol']} {s['exchange']}")
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M", tz="UTC"))
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7, loc="best")
    ax.axhline(0, color="#999999", linewidth=0.6)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("close, % vs day's open", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, linewidth=0.3)
    fig.tight_layout()
    return _png(fig)


def _busiest(bars: pa.Table, n: int) -> list[dict]:
    """The n busiest (exchange, symbol) series by quote volume, at most one per base asset."""
    totals = bars.group_by(["exchange", "symbol"]).aggregate([("quote_volume", "sum")])
    ranked = totals.sort_by([("quote_volume_sum", "descending"), ("exchange", "ascending"), ("symbol", "ascending")])
    chosen, bases = [], set()
    for s in ranked.to_pylist():
        base = s["symbol"].split("/")[0]
        if base not in bases:
            chosen.append(s)
            bases.add(base)
        if len(chosen) == n:
            break
    return chosen


def _series(bars: pa.Table, s: dict) -> pa.Table:
    mask = pc.and_(pc.equal(bars["exchange"], s["exchange"]), pc.equal(bars["symbol"], s["symbol"]))
    return bars.filter(mask).sort_by("window_start")


def _change(rows: pa.Table) -> list[float]:
    """Each bar's close as the change in % from the first bar's open (floats: for drawing only)."""
    opened = float(rows["open"][0].as_py())
    return [(float(c) / opened - 1) * 100 for c in rows["close"].to_pylist()]


def _png(fig) -> bytes:
    """The figure as a 64-colour PNG: a third the size of a true-colour one, the same to the eye (a chart
    is stored in every gold materialization's metadata). Pillow comes with matplotlib."""
    from PIL import Image

    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=64).save(out, format="PNG", optimize=True)
    return out.getvalue()
