"""One function per recurring figure. Each returns the matplotlib Figure; notebooks only call them.
Error bars are one standard deviation over seeds."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .findings import HEADERS

SCHEME_ORDER = ["lr", "br", "br+gp", "br+gp+cr"]
LABELS = {"lr": "LR", "br": "BR", "br+gp": "BR+GP", "br+gp+cr": "BR+GP+CR"}


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
    """Per-block normalized error (log y), mean ± sd over seeds, one panel per model and criterion."""
    grid = sns.relplot(_schemes(curves), x="block", y="error", hue="scheme", hue_order=[LABELS[s] for s in SCHEME_ORDER],
                       row="model", col="criterion", kind="line", errorbar="sd", height=2.6, aspect=1.2,
                       facet_kws={"sharey": "row", "sharex": "row"})
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
