"""Finding 2 along the calibration set's size (issue 40): CR's paired change at each volume of the ladder, the
paper's regime each volume matches by finding 2's rule, and from which volume on (if any) CR stops raising the
test error."""
from __future__ import annotations

import pandas as pd

from . import findings, grid, stats
from .findings import METRICS, Part, measured, verdict_overfitting


def table(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    """Finding 2's pair at each calibration volume of the ladder and at the book's own (its runs' first seeds),
    one row a run; `tokens` = n_calib × seq_len."""
    df = findings.table(grid.ladder_cells(profile, model, own=True), profile, progress)
    return df.assign(tokens=df.n_calib * df.seq_len)


def changes(df: pd.DataFrame) -> pd.DataFrame:
    """CR's paired change at each point, part by part, in % of BR+GP's value (so errors and perplexities read on
    one axis): mean, 95% CI, n, and the move by finding 2's rule (↑, ↓ or ≈)."""
    rows = []
    for (model, n_calib, seq_len), d in df.groupby(["model", "n_calib", "seq_len"], sort=False):
        regime_ = verdict_overfitting(d)["regime"]
        for m, move in zip(measured(d), regime_.ours):
            part = Part(METRICS[m], findings.changes(d, "recon", "br+gp", "br+gp+cr", m, relative=True), 1)
            t = part.test
            rows.append({"model": model, "point": f"{n_calib} × {seq_len}", "tokens": n_calib * seq_len,
                         "part": METRICS[m], "change %": t.mean, "lo": t.ci[0], "hi": t.ci[1], "n": t.n, "move": move})
    return pd.DataFrame(rows, columns=["model", "point", "tokens", "part", "change %", "lo", "hi", "n", "move"])


def regimes(profile: str, df: pd.DataFrame) -> pd.DataFrame:
    """Per model and point (every point of the grid, measured or not): each part's move and the paper's regime it
    matches (LLaMA-7B overfits, OPT-125M does not), by finding 2's rule."""
    rows = []
    for model in grid.grid(profile).models:
        points = sorted({(c.n_calib, c.seq_len) for c in grid.ladder_cells(profile, model, own=True)},
                        key=lambda p: (p[0] * p[1], p[1]))  # by tokens, then the shorter windows
        for n_calib, seq_len in points:
            d = df[(df.model == model) & (df.n_calib == n_calib) & (df.seq_len == seq_len)]
            row = {"model": model, "point": f"{n_calib} × {seq_len}", "tokens": n_calib * seq_len}
            pairs = len(set(d[d.recon == "br+gp"].seed) & set(d[d.recon == "br+gp+cr"].seed))
            if pairs < 2:
                rows.append(row | {"n": pairs, "matches": stats.NONE if not pairs else "one seed: no regime"})
                continue
            v = verdict_overfitting(d)
            rows.append(row | {short: move for short, move in zip(SHORT, v["regime"].ours)} | {"n": pairs,
                                                                                               "matches": v["matches"]})
    return pd.DataFrame(rows)


SHORT = ["calib.", "test WT2", "test PTB", "ppl WT2", "ppl PTB"]  # the regime table's narrow heads, METRICS' order


def answer(regimes: pd.DataFrame) -> str:
    """In words, per model: from which volume on CR stops raising the test error (if it does), and the paper's
    regime each measured volume matches."""
    out = []
    for model, r in regimes.groupby("model", sort=False):
        m = r[r.n >= 2]
        tests = [c for c in ("test WT2", "test PTB") if c in m]
        if not len(m) or not tests:
            out.append(f"{model}: not measured yet")
            continue
        up = m[tests].eq("↑").any(axis=1).tolist()
        if not any(up):
            when = "CR raises no test error at any volume measured"
        elif up[-1]:
            when = f"CR still raises a test error at the largest volume measured ({m.point.iloc[-1]})"
        else:
            when = f"CR stops raising the test error from {m.point.iloc[max(i for i, u in enumerate(up) if u) + 1]} on"
        out.append(f"{model}: {when}; regimes by volume: " + ", ".join(f"{p} {x}" for p, x in zip(m.point, m.matches)))
    return "; ".join(out) + "."
