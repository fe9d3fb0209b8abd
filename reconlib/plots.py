"""One function per recurring figure. Each returns the matplotlib Figure; notebooks only call them."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

SCHEME_ORDER = ["lr", "br", "br+gp", "br+gp+cr"]
LABELS = {"lr": "LR", "br": "BR", "br+gp": "BR+GP", "br+gp+cr": "BR+GP+CR"}


def block_error_curves(curves: pd.DataFrame, data: str = "calibration"):
    """Per-block normalized error (log y) for each scheme, one panel per criterion: the compounding."""
    df = curves[curves.data == data].assign(scheme=lambda d: d.recon.map(LABELS))
    grid = sns.relplot(df, x="block", y="error", hue="scheme", hue_order=[LABELS[s] for s in SCHEME_ORDER],
                       col="criterion", kind="line", marker="o", height=3.2, aspect=1.1)
    grid.set(yscale="log")
    grid.set_axis_labels("block i", f"error at block i ({data})")
    return grid.figure


def final_error_bars(df: pd.DataFrame):
    """Final-block error per criterion and scheme (log y)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(df.assign(scheme=df.recon.map(LABELS)), x="criterion", y="final_error", hue="scheme",
                hue_order=[LABELS[s] for s in SCHEME_ORDER], ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("final-block error (calibration)")
    return fig


def calib_vs_test(df: pd.DataFrame, test: str):
    """Calibration error against test error per run; an arrow-free scatter labelled by scheme."""
    fig, ax = plt.subplots(figsize=(5, 4))
    sns.scatterplot(df.assign(scheme=df.recon.map(LABELS)), x="final_error", y=f"test_error_{test}",
                    hue="criterion", style="scheme", s=80, ax=ax)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("final error, calibration data")
    ax.set_ylabel(f"final error, {test} test windows")
    return fig


def metric_vs(df: pd.DataFrame, x: str, metrics: list[str]):
    """Several metrics against one swept field, one panel each."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sns.lineplot(df, x=x, y=metric, marker="o", ax=ax)
        ax.set_title(metric)
    fig.tight_layout()
    return fig
