"""Report plots as PNG files (matplotlib, Agg: no display needed): accuracy against latency with the Pareto front,
latency and throughput against batch size, the dims a compressed model kept per block against the dense model,
and the two study plots (decomposition methods at equal ranks, the hybrid sweep's frontier).

Each function takes plain data, writes one PNG atomically and returns its path.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from vitdeploy.io import atomic_file  # noqa: E402
from vitdeploy.viz.pareto import pareto_front  # noqa: E402

_LINESTYLES = {"fp32": "-", "fp16": "--", "int8": ":", "fp16-autocast": "-."}
_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "fp16-autocast": "D"}
_KEPT_GROUPS = (  # (label, function of one block row) in the order the bars stand in each block's group
    ("residual width", lambda b: b.get("width") or max(b["attn_in"], b["mlp_in"])),
    ("attention input dims", lambda b: b["attn_in"]),
    ("attention q/k (heads × qk dim)", lambda b: b["heads"] * b["qk_head_dim"]),
    ("attention v (heads × v dim)", lambda b: b["heads"] * b["v_head_dim"]),
    ("MLP input dims", lambda b: b["mlp_in"]),
    ("MLP hidden dims", lambda b: b["mlp_hidden"]),
)


def save_figure(fig: Figure, path: Path) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(dict.fromkeys(names))}


def plot_kept_dims(kept: list[dict], dense: list[dict] | None, path: Path, title: str) -> Path:
    """Grouped bars per block: the residual width, attention input dims, q/k and v widths (heads × head dim), MLP input and hidden dims kept, drawn
    over the dense model's dims (light bars) when `dense` (same row format as `kept`) is given."""
    if not kept:
        raise ValueError("plot_kept_dims needs at least one block")
    n, width = len(kept), 0.14
    fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * n + 3), 4.2))
    colors = plt.get_cmap("tab10")
    for g, (label, value) in enumerate(_KEPT_GROUPS):
        xs = [i + (g - (len(_KEPT_GROUPS) - 1) / 2) * width for i in range(n)]
        if dense is not None:
            ax.bar(xs, [value(b) for b in dense], width * 0.95, color="0.88", edgecolor="0.6", linewidth=0.6,
                   label="dense" if g == 0 else None, zorder=1)
        ax.bar(xs, [value(b) for b in kept], width * 0.7, color=colors(g), label=label, zorder=2)
        for x, k, d in zip(xs, kept, dense or []):
            if value(k) != value(d):  # say how much of a pruned site is left, above its dense bar
                ax.text(x, value(d), f"{100 * value(k) / value(d):.0f}%", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(range(n), [str(b.get("block", i)) for i, b in enumerate(kept)])
    ax.set_xlabel("block")
    ax.set_ylabel("dims kept")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14),
              frameon=False)
    return save_figure(fig, path)


def accuracy_latency_figure(points: list[dict], front: list[int], title: str) -> Figure:
    """The figure of plot_accuracy_latency (kept apart so its layout can be checked without writing a file)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = _colors([p["variant"] for p in points])
    xs, ys = [p["p50_ms"] for p in points], [100 * p["top1"] for p in points]
    err = [100 * 1.96 * math.sqrt(p["top1"] * (1 - p["top1"]) / p["n_eval"]) if p.get("n_eval") else 0.0 for p in points]
    order = sorted(range(len(points)), key=lambda i: (xs[i], -ys[i]))
    key = {i: k + 1 for k, i in enumerate(order)}  # points are numbered by latency; the legend is the key
    handles = []
    for i in order:
        p = points[i]
        if err[i]:
            ax.errorbar(xs[i], ys[i], yerr=err[i], fmt="none", ecolor=colors[p["variant"]], alpha=0.35, capsize=4, zorder=1)
        ax.scatter(xs[i], ys[i], s=60, color=colors[p["variant"]], marker=_MARKERS.get(p["precision"], "o"),
                   edgecolor="black", linewidth=0.6, zorder=3)
        handles.append(Line2D([], [], marker=_MARKERS.get(p["precision"], "o"), linestyle="", color=colors[p["variant"]],
                              markeredgecolor="black", label=f"{key[i]}  {p['variant']} {p['precision']} "
                                                             f"({p['p50_ms']:.3g} ms, {ys[i]:.1f} %)"))
    # Numbers sit in evenly spaced slots along the top of the axes, in the order of the points below them, with a
    # leader line to each point: they cannot overlap whatever the data (two staggered rows when there are many).
    rows = 1 if len(points) <= 24 else 2
    for k, i in enumerate(order):
        slot = (k + 0.5) / len(points)
        ax.annotate(str(key[i]), (xs[i], ys[i]), xytext=(slot, 0.955 - 0.055 * (k % rows)),
                    textcoords="axes fraction", fontsize=7.5, ha="center", va="center", xycoords="data",
                    arrowprops=dict(arrowstyle="-", color="0.65", linewidth=0.5, shrinkA=4, shrinkB=4))
    log_x = min(xs) > 0 and max(xs) / min(xs) > 3  # an outlier would squeeze every other point into a corner
    if log_x:
        ax.set_xscale("log")
        left, right = min(xs) / 1.15, max(xs) * 1.15
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""))
    else:
        span = (max(xs) - min(xs)) or 0.5 * max(xs)
        left, right = max(0.0, min(xs) - 0.1 * span), max(xs) + 0.1 * span
    if front:  # the staircase is the best top-1 reachable within each latency budget
        fx, fy = [xs[i] for i in front], [ys[i] for i in front]
        ax.step(fx + [right], fy + fy[-1:], where="post", color="0.3", linestyle="--", linewidth=1, zorder=2)
        ax.scatter(fx, fy, s=170, facecolor="none", edgecolor="0.3", linewidth=1, zorder=2)
        handles.append(Line2D([], [], color="0.3", linestyle="--", label="Pareto front (best top-1 within a budget)"))
    if any(err):
        handles.append(Line2D([], [], color="0.5", marker="_", markersize=10, alpha=0.6, label="95 % interval of top-1"))
    ax.legend(handles=handles, fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              handletextpad=0.4, labelspacing=0.35)
    ax.set_xlim(left, right)
    pad = max(0.5, (max(ys) - min(ys)) * 0.25)
    low, high = min(y - e for y, e in zip(ys, err)) - pad, max(y + e for y, e in zip(ys, err)) + pad
    ax.set_ylim(max(0.0, low), min(100.0, high) + 0.25 * (high - low))  # headroom for the number row
    ax.set_xlabel("p50 latency per call (ms), lower is better" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def plot_accuracy_latency(points: list[dict], front: list[int], path: Path, title: str) -> Path:
    """Top-1 (%) against p50 latency (ms): one marker per variant × precision (colour = variant, shape = precision),
    numbered by latency and keyed to a legend that names each with its p50 and top-1, with the Pareto front drawn
    as a staircase. Points with an eval size (`n_eval`) carry their 95 % binomial interval, so a zoomed-in axis does
    not make noise look like a difference; the latency axis turns logarithmic when the points span more than 3×."""
    return save_figure(accuracy_latency_figure(points, front, title), path)


def plot_latency_vs_batch(series: dict[tuple[str, str, str], list[tuple[int, float, float]]], path: Path,
                          title: str) -> Path:
    """Two panels against batch size: p50 latency (ms) and throughput (img/s), one line per (variant, precision,
    backend) from points (batch, p50_ms, images_per_s); colour = variant, line style = precision."""
    fig, (lat_ax, thr_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = _colors([k[0] for k in series])
    backends = list(dict.fromkeys(k[2] for k in series))
    batches = sorted({b for pts in series.values() for b, _, _ in pts})
    for (variant, precision, backend), pts in series.items():
        pts = sorted(pts)
        label = f"{variant} {precision}" + (f" [{backend}]" if len(backends) > 1 else "")
        style = dict(color=colors[variant], linestyle=_LINESTYLES.get(precision, "-"),
                     marker="os^Dv"[backends.index(backend) % 5], markersize=5)
        lat_ax.plot([b for b, _, _ in pts], [t for _, t, _ in pts], label=label, **style)
        thr_ax.plot([b for b, _, _ in pts], [r for _, _, r in pts], **style)
    lats = [t for pts in series.values() for _, t, _ in pts]
    if max(lats) > 10 * min(lats):  # batch 1 and batch 64 on one linear axis would hide the small batches
        lat_ax.set_yscale("log")
        lat_ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        lat_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        lat_ax.yaxis.set_minor_formatter(NullFormatter())
    thr = [r for pts in series.values() for _, _, r in pts]
    thr_ax.set_ylim(0, max(thr) * 1.1)  # from zero, so the gaps between lines are not magnified
    for ax, ylabel in ((lat_ax, "p50 latency per call (ms)"), (thr_ax, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    lat_ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_study(rows: list[dict], short: dict[str, str], path: Path, title: str) -> Path:
    """Top-1 before and after the fine-tune, one pair of bars per method, params under each name; the axis starts
    a little below the lowest bar so differences of a point stay visible."""
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(rows) + 2), 4.2))
    xs = range(len(rows))
    vals_all = []
    for off, key, label, color in ((-0.2, "top1_before_finetune", "before fine-tune", "0.7"),
                                   (0.2, "top1_after_finetune", "after fine-tune", "tab:blue")):
        vals = [100 * (r[key] or 0.0) for r in rows]
        vals_all += vals
        bars = ax.bar([x + off for x in xs], vals, 0.38, color=color, label=label, zorder=2)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{short.get(r['method'], r['label'])}\n{r['params'] / 1e6:.3f} M" for r in rows], fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(max(0.0, math.floor(min(vals_all)) - 3), min(100.0, max(vals_all)) + 1.5)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return save_figure(fig, path)


def plot_frontier(rows: list[dict], n_eval: int, path: Path, title: str) -> Path:
    """Top-1 after fine-tuning against params: hybrid and VTP points with their 95 % intervals, each series' frontier
    (the best top-1 at or below each params count) as a staircase, and the dense model. Labels: r<rank ratio>/m<MLP rate>."""
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"hybrid": ("tab:orange", "o"), "vtp": ("tab:blue", "s"), "dense": ("black", "*")}
    right = max(r["params"] for r in rows if r["series"] != "dense") / 1e6
    for series, (color, marker) in styles.items():
        pts = [r for r in rows if r["series"] == series]
        if not pts:
            continue
        xs = [r["params"] / 1e6 for r in pts]
        ys = [100 * r["top1_after_finetune"] for r in pts]
        err = [100 * 1.96 * math.sqrt(max(r["top1_after_finetune"] * (1 - r["top1_after_finetune"]), 1e-12) / n_eval)
               for r in pts]
        ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=color, alpha=0.35, capsize=3, zorder=1)
        ax.scatter(xs, ys, s=140 if series == "dense" else 50, color=color, marker=marker, edgecolor="black",
                   linewidth=0.6, zorder=3, label={"hybrid": "hybrid (low-rank attention + MLP pruning)",
                                                  "vtp": "VTP alone", "dense": "dense"}[series])
        if series != "dense":
            front = pareto_front(list(zip(xs, ys)))  # the best top-1 at or below each params count
            fy = [ys[i] for i in front]
            ax.step([xs[i] for i in front] + [right], fy + fy[-1:], where="post", color=color, linestyle="--",
                    linewidth=1, zorder=2)
        for k, (r, x, y) in enumerate(sorted(zip(pts, xs, ys), key=lambda t: t[1])):
            if series == "hybrid":  # alternate above/below so neighbours at equal params stay readable
                ax.annotate(f"r{r['rank_ratio']:g}/m{r['mlp_rate']:g}", (x, y), fontsize=7,
                            xytext=(4, 5 if k % 2 == 0 else -11), textcoords="offset points")
    ax.set_xlabel("params (M)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_int8_sensitivity(rows: list[dict], path: Path, title: str) -> Path:
    """Per quantizable layer (graph order): above, the accuracy INT8 costs on it alone and what leaving it out of
    the full placement gives back (points); below, the milliseconds INT8 saves on it. Layers the plan returned
    to float are hatched."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.22 * len(rows) + 3), 6.0), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    xs = list(range(len(rows)))
    for off, key, label, color in ((-0.2, "alone_loss_points", "INT8 alone: loss", "tab:red"),
                                   (0.2, "left_out_gain_points", "left out of full INT8: gain", "tab:blue")):
        bars = top.bar([x + off for x in xs], [r[key] for r in rows], 0.4, color=color, label=label, zorder=2)
        for b, r in zip(bars, rows):
            if not r["int8"]:
                b.set_hatch("//")
                b.set_edgecolor("black")
    top.axhline(0, color="black", linewidth=0.6)
    top.set_ylabel("points (held-out)")
    top.set_title(title)
    top.grid(axis="y", alpha=0.3, zorder=0)
    top.legend(fontsize=8, loc="upper right")
    gains = [r["gain_ms"] if r["gain_ms"] is not None else 0.0 for r in rows]
    colors = ["tab:green" if r["int8"] else "0.6" for r in rows]
    bottom.bar(xs, gains, 0.6, color=colors, zorder=2)
    bottom.axhline(0, color="black", linewidth=0.6)
    bottom.set_ylabel("INT8 saves (ms)")
    bottom.grid(axis="y", alpha=0.3, zorder=0)
    bottom.set_xticks(xs, [r["layer"] for r in rows], rotation=90, fontsize=6)
    bottom.legend(handles=[Line2D([0], [0], color="tab:green", lw=6, label="INT8 in the plan"),
                           Line2D([0], [0], color="0.6", lw=6, label="returned to float")], fontsize=8)
    return save_figure(fig, path)


def plot_budget(b: dict, path: Path, title: str) -> Path:
    """A latency budget plan at a glance: left, each plan's predicted and measured latency against the target (the
    replans after a miss); right, this plan beside the rate-based plan at the same predicted latency: measured
    latency and the share of the importance each keeps."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    rounds = b["rounds"]
    xs = list(range(1, len(rounds) + 1))
    left.plot(xs, [r["predicted_ms"] for r in rounds], "o--", color="tab:blue", label="predicted (table)")
    left.plot(xs, [r["measured_ms"] for r in rounds], "s-", color="tab:orange", label="measured (interleaved)")
    target = [r["target_ms"] for r in rounds]
    tol = b.get("tolerance", 0.05)
    left.fill_between(xs, [t * (1 - tol) for t in target], [t * (1 + tol) for t in target], color="tab:green",
                      alpha=0.15, label=f"target ±{100 * tol:.0f} %")
    left.plot(xs, target, "-", color="tab:green", linewidth=1)
    left.set_xticks(xs, [f"plan {x}" for x in xs])
    left.set_ylabel(f"ms per call, batch {b['batch']}")
    ys = [r["predicted_ms"] for r in rounds] + [r["measured_ms"] for r in rounds] + target
    left.set_ylim(0, max(ys) * 1.25)
    left.set_xlim(0.6, len(xs) + 0.4)
    left.legend(fontsize=8, loc="lower right")
    left.grid(axis="y", alpha=0.3)
    r = b.get("rate_based")
    if r:
        names = ["latency plan", f"rate plan ({r['rate']:.2f})"]
        ms = [r["budget_plan_measured_ms"], r["measured_ms"]]
        kept = [100 * b["retained_importance"] / b["total_importance"], 100 * r["retained_importance"] / b["total_importance"]]
        bars = right.bar(names, kept, color=["tab:blue", "0.6"])
        for bar, m, k in zip(bars, ms, kept):
            right.text(bar.get_x() + bar.get_width() / 2, k, f"{k:.1f} %\n{m:.2f} ms", ha="center", va="bottom",
                       fontsize=8)
        right.set_ylim(0, 115)
        right.set_ylabel("importance kept (%)")
        right.set_title("at the same predicted latency", fontsize=9)
    else:
        right.axis("off")
    fig.suptitle(title)
    return save_figure(fig, path)
