"""One function per recurring figure. Each returns the matplotlib Figure; notebooks only call them.
Error bars are one standard deviation over seeds."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .config import SCHEMES as SCHEME_ORDER
from .findings import HEADERS, LABELS


def _schemes(df: pd.DataFrame) -> pd.DataFrame:
    # the notebooks stack one frame per model, each indexed from 0; seaborn refuses repeated index labels
    return df.reset_index(drop=True).assign(scheme=lambda d: d.recon.map(LABELS))


def _long(df: pd.DataFrame, keys: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per (keys, metric), the metric named by its table head: panel titles sit side by side."""
    d = df.melt(id_vars=keys, value_vars=metrics, var_name="metric")
    return d.assign(metric=d.metric.map(lambda m: HEADERS.get(m, m)))


def _done(grid):
    """Close the figure: the notebooks glue it into the page, and an open one would show a second time."""
    plt.close(grid.figure)
    return grid.figure


def block_error_curves(curves: pd.DataFrame):
    """Per-block normalized error (log y), one thin line per seed and the geometric mean over seeds thick, one
    panel per model and criterion: on a log axis a mean ± sd band runs off the plot where seeds spread by 10×."""
    d, order = _schemes(curves), [LABELS[s] for s in SCHEME_ORDER]
    grid = sns.relplot(d, x="block", y="error", hue="scheme", hue_order=order, units="seed", estimator=None,
                       row="model", col="criterion", kind="line", linewidth=0.5, alpha=0.4, height=2.6, aspect=1.2,
                       facet_kws={"sharey": "row", "sharex": "row"})
    grid.map_dataframe(sns.lineplot, x="block", y="error", hue="scheme", hue_order=order, linewidth=1.6,
                       estimator=lambda v: float(np.exp(np.log(v).mean())), errorbar=None)
    for handle in grid.legend.legend_handles:  # the legend's lines as the thick means, not the faint seeds
        handle.set(alpha=1.0, linewidth=1.6)
    grid.set(yscale="log")
    grid.set_titles("{row_name} · {col_name}")
    grid.set_axis_labels("block i", "error at block i")
    return _done(grid)


def final_error_bars(df: pd.DataFrame):
    """Final-block calibration error per criterion and scheme (log y), mean ± sd over seeds, a panel per model."""
    grid = sns.catplot(_schemes(df), x="criterion", y="final_error", hue="scheme", col="model", kind="bar",
                       hue_order=[LABELS[s] for s in SCHEME_ORDER], errorbar="sd", sharey=False, height=3.2, aspect=1.2)
    grid.set(yscale="log")
    grid.set_axis_labels("", "final-block error (calibration)")
    return _done(grid)


def paired_change(df: pd.DataFrame, key: str, before, after, metrics: list[str]):
    """Each seed's move from `before` to `after` of `key`, one line per seed, a panel per model and metric."""
    if not df[key].isin([before, after]).any():
        return empty("no runs in the store yet: `make records` computes them")
    d = _long(df[df[key].isin([before, after])], ["model", "seed", key], metrics)
    d[key] = d[key].map({before: str(before), after: str(after)} if key != "recon" else LABELS)
    grid = sns.relplot(d, x=key, y="value", units="seed", estimator=None, row="model", col="metric", kind="line",
                       marker="o", height=2.6, aspect=0.9, facet_kws={"sharey": False})
    grid.set_titles("{row_name} · {col_name}")
    grid.set_axis_labels("", "")
    return _done(grid)


def metric_vs(df: pd.DataFrame, x: str, metrics: list[str]):
    """Metrics against one swept field, mean ± sd where a point has several seeds, a row per model."""
    d = _long(df, ["model", "seed", x], metrics)
    grid = sns.relplot(d, x=x, y="value", row="model", col="metric", kind="line", marker="o", errorbar="sd",
                       err_style="bars", height=2.6, aspect=1.0, facet_kws={"sharey": False})
    grid.set_titles("{row_name} · {col_name}")
    grid.set_axis_labels(x, "")
    return _done(grid)


def ladder(changes: pd.DataFrame, book: int, paper: int):
    """CR's paired change (% of BR+GP's value, 95% CI) per part against calibration tokens (log), a panel per
    model; dotted lines at the book's volume and the paper's."""
    models = list(dict.fromkeys(changes.model)) or ["no runs yet"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), squeeze=False, sharey=False)
    for ax, model in zip(axes[0], models):
        d = changes[(changes.model == model) & (changes.n >= 2)]
        for k, (part, p) in enumerate(d.groupby("part", sort=False)):
            x = p.tokens * (1.04 ** (k - 2))  # parts side by side at each volume, so their bars do not overlap
            ax.errorbar(x, p["change %"], yerr=[p["change %"] - p.lo, p.hi - p["change %"]], marker="o", ms=3,
                        capsize=2, label=part)
        for at, what in ((book, "book"), (paper, "paper")):
            ax.axvline(at, color="grey", ls=":", lw=1)
            ax.text(at, 1.0, what, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(xscale="log", xlim=(2e3, 4e5), xlabel="calibration tokens", title=model)
    axes[0][0].set_ylabel("CR's change, % of BR+GP")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    plt.close(fig)  # glued into the page: an open one would show a second time
    return fig


def unit_curves(curves: pd.DataFrame, title: str = ""):
    """One run's units (`stopping.curves`): error on the trained and on the held-out windows against the epoch,
    each unit relative to its own error before training, coloured by depth; a dot where each unit's held-out
    error is lowest (where early stopping keeps it)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, which, name in zip(axes, ("train", "heldout"), ("trained windows", "held-out windows")):
        d = curves[curves.windows == which]
        sns.lineplot(d, x="epoch", y="relative", hue="block", units="unit", estimator=None, palette="viridis",
                     legend=ax is axes[-1], linewidth=0.9, ax=ax)
        stops = d[d.epoch == d.stop]
        ax.scatter(stops.epoch, stops.relative, s=12, color="black", zorder=3, label="lowest held-out")
        ax.axhline(1, color="grey", linewidth=0.6, linestyle=":")
        ax.set(yscale="log", title=name, xlabel="epoch (0 = before training)", ylabel="error ÷ error at epoch 0")
    axes[-1].legend(title="block", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def gaps(df: pd.DataFrame):
    """Held-out ÷ trained error at each unit's last epoch against depth, mean ± sd over seeds, per setting."""
    grid = sns.relplot(df, x="block", y="gap", hue="setting", style="recon", row="model", kind="line", errorbar="sd",
                       height=2.8, aspect=2.0, facet_kws={"sharey": False})
    grid.set(yscale="log")
    grid.set_titles("{row_name}")
    grid.set_axis_labels("last block of the unit", "held-out ÷ trained error")
    return _done(grid)


def empty(text: str):
    """A figure that says why there is none yet (a glued figure must exist for the page to build)."""
    fig, ax = plt.subplots(figsize=(6, 1))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    ax.axis("off")
    plt.close(fig)
    return fig
