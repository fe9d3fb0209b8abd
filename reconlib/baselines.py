"""The layer-wise baselines a reviewer asks for beside finding 1 (issue 39): BR, GP and CR's cut against the exact
layer-wise solve as well as against the paper's LR, ADMM's LR, and whether OWL's non-uniform sparsity still pays
after reconstruction; the same rows and the same verdict rule as findings.py."""
from __future__ import annotations

import pandas as pd

from . import grid, stats
from .config import CRITERIA, SCHEMES
from .findings import (LABELS, Part, changes, deciding, deciding_part, error_reduction, fmt_change, fmt_p, judge,
                       spread, table)


def exact_lr(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    """Finding 1's rows with the layer-wise baselines beside them: each criterion's LR with its survivors refit by
    least squares (recon "exact lr") and ADMM's LR (criterion "admm")."""
    f1 = error_reduction(profile, model, progress)
    base = table([c for c in grid.baseline_cells(profile)["exact lr"] if c.model == model], profile, progress)
    base.loc[base.refit.astype(bool), "recon"] = "exact lr"
    return pd.concat([f1, base], ignore_index=True) if len(base) else f1


def cuts(df: pd.DataFrame) -> dict:
    """The cut of BR, BR+GP and BR+GP+CR in the final error against the paper's LR and against the exact LR, per
    criterion, in % of that LR's error, paired by seed; judged by the rule as "each scheme cuts the error below the
    exact LR" → judge's dict plus `table` (criterion × scheme: both cuts side by side)."""
    rows, parts = [], []
    for c in CRITERIA:
        d = df[df.criterion == c]
        for scheme in SCHEMES[1:]:
            paper_lr = Part(f"{c} {LABELS[scheme]} vs LR", changes(d, "recon", "lr", scheme, "final_error", True), -1)
            exact = Part(f"{c} final error, exact LR → {LABELS[scheme]}",
                         changes(d, "recon", "exact lr", scheme, "final_error", True), -1)
            parts.append(exact)
            rows.append({"criterion": c, "scheme": LABELS[scheme], "cut vs LR %": fmt_change(paper_lr),
                         "cut vs exact LR %": fmt_change(exact), "p": fmt_p(exact.test.p), "n": exact.test.n})
    v = judge("1x. BR, GP and CR each lower the final error below the exact layer-wise solve", parts,
              "% of the exact LR's error", claimed_by="claim")
    return v | {"table": pd.DataFrame(rows)}


def exact_answer(model: str, v: dict) -> str:
    """One sentence: the cut of BR+GP+CR against the exact LR beside that against the paper's LR (SparseGPT), and
    what the rule says of "each scheme beats the exact LR", with the part that decides it (that part may be another
    criterion's: the store holds some criteria's exact LR before the rest)."""
    t = v["table"]
    row = t[(t.criterion == "sparsegpt") & (t.scheme == "BR+GP+CR")]
    if v["verdict"] == stats.NONE or not len(row):
        return f"{model}: {stats.NONE}"
    row = row.iloc[0]
    cut = (f"BR+GP+CR cuts SparseGPT's final error by {row['cut vs exact LR %']}% against the exact LR (by "
           f"{row['cut vs LR %']}% against the paper's LR)" if row["n"] else f"SparseGPT's exact LR: {stats.NONE}")
    return (f"{model}: {cut}; that every scheme beats the exact LR **{v['verdict']}** ({deciding(v)}, "
            f"n = {deciding_part(v).test.n})")


def admm_row(df: pd.DataFrame) -> pd.DataFrame:
    """ADMM's LR beside the paper's LRs and SparseGPT's BR+GP+CR: mean final error ± sd over seeds."""
    d = df[(df.recon.isin(["lr", "exact lr"])) | ((df.criterion == "sparsegpt") & (df.recon == "br+gp+cr"))]
    return spread(d.assign(row=d.criterion + " " + d.recon.map(lambda r: LABELS.get(r, "exact LR"))),
                  ["model", "row"], ["final_error", "ppl_wikitext2"])


# ------------------------------------------------------------------ OWL's allocation, with and without reconstruction
def owl(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    """The 70% block: {uniform, OWL} × {LR, BR+GP} × {Wanda, SparseGPT}, one row a run."""
    return table([c for c in grid.baseline_cells(profile)["owl"] if c.model == model], profile, progress)


def owl_gain(df: pd.DataFrame) -> dict:
    """OWL against uniform at LR and at BR+GP, per criterion (WikiText-2 perplexity and final error, paired by
    seed), and whether reconstruction shrinks its perplexity gain: the per-seed gain at LR minus that at BR+GP
    (> 0: smaller after reconstruction). The claim judged: OWL lowers perplexity at every criterion and scheme."""
    parts, shrink = [], []
    for c in ("wanda", "sparsegpt"):
        gains = {}
        for r in ("lr", "br+gp"):
            d = df[(df.criterion == c) & (df.recon == r)]
            ppl_ = Part(f"{c} {LABELS[r]}: WikiText-2 perplexity, uniform → OWL",
                        changes(d, "allocation", "uniform", "owl", "ppl_wikitext2"), -1)
            parts += [ppl_, Part(f"{c} {LABELS[r]}: final error, uniform → OWL",
                                 changes(d, "allocation", "uniform", "owl", "final_error"), -1)]
            gains[r] = dict(zip(sorted(set(d[d.allocation == "uniform"].seed) & set(d[d.allocation == "owl"].seed)),
                                [-x for x in ppl_.changes]))
        both = sorted(set(gains["lr"]) & set(gains["br+gp"]))
        shrink.append(Part(f"{c}: OWL's perplexity gain, LR minus BR+GP", [gains["lr"][s] - gains["br+gp"][s]
                                                                          for s in both], +1))
    v = judge("OWL lowers perplexity at 70%, with and without reconstruction", parts[::2], "perplexity",
              claimed_by="claim")
    table = pd.DataFrame([{"part": p.name, "change, 95% CI": fmt_change(p), "p": fmt_p(p.test.p), "n": p.test.n}
                          for p in parts + shrink])
    return v | {"table": table, "shrink": {p.name: p for p in shrink}}
