"""Finding 4 (beyond the paper): each unit's error on held-out calibration windows while it trains, and early
stopping on it (RunConfig.holdout, early_stop; the runs are grid.early_stop_cells and grid.stop_sweep_cells)."""
from __future__ import annotations

import functools
import math

import pandas as pd

from . import findings, grid, stats
from .findings import LABELS, METRICS, Part, judge

VARIANTS = ("fixed", "early stop", "more real")


def variant(config: dict) -> str:
    return "early stop" if config.get("early_stop") else "more real" if config.get("extra_real") else "fixed"


def setting(config: dict) -> str:
    return f"{config['n_calib']} × {config['epochs']}"


def _row(record: dict, subset: int) -> dict:
    c, curves = record["config"], record.get("unit_curves", [])
    out = findings.row(record, subset) | {"setting": setting(c), "variant": variant(c), "holdout": c.get("holdout", 0)}
    out["holdout_error"] = record["holdout_block_error"][-1] if record.get("holdout_block_error") else math.nan
    # how far into its epochs a unit stops (or would stop, without early_stop): 0 = untrained, 1 = all epochs
    out["stop_fraction"] = sum(u["stop"] for u in curves) / len(curves) / c["epochs"] if curves else math.nan
    out["monitor_%"] = 100 * record["seconds"].get("monitor", 0.0) / record["seconds"]["prune"]
    return out


COLUMNS = ["model", "seed", "recon", "setting", "variant", "n_calib", "holdout", "final_error", "holdout_error",
           "test_error_wikitext2", "test_error_ptb", "ppl_wikitext2", "ppl_ptb", "stop_fraction", "seconds", "monitor_%",
           "cpu"]


def table(profile: str, configs: list, progress: bool = True) -> pd.DataFrame:
    """One row per stored (or computed) run; the columns are there even before any run is."""
    subset = grid.base(profile).max_eval_windows
    rows = [_row(r, subset) for r in findings.read(configs, progress)]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=COLUMNS)


def runs(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    """The experiment's rows: setting × recon × variant × seed."""
    return table(profile, grid.early_stop_cells(profile, model), progress)


def sweep(profile: str, progress: bool = True) -> pd.DataFrame:
    """The sweep's runs, one row a setting, in the pages' short column heads."""
    df = table(profile, grid.stop_sweep_cells(profile), progress)
    cols = ["final_error", "holdout_error", "test_error_wikitext2", "test_error_ptb", "ppl_ptb", "stop_fraction"]
    return df.set_index("setting")[cols].rename(columns=findings.HEADERS)


def settings(profile: str) -> list[str]:
    """Finding 4's settings by name, the overfitting one first, then the profile's own."""
    return [setting({"n_calib": n_calib, "epochs": epochs}) for n_calib, epochs in grid.stop_settings(profile)]


def overfit_setting(profile: str) -> str:
    return settings(profile)[0]


def verdict(df: pd.DataFrame, against: str, setting_: str) -> dict:
    """In the overfitting setting, BR+GP+CR with early stopping has lower test errors and perplexity than
    `against`: "fixed" (the same runs to their last epoch) or "more real" (trained on the held-out windows too)."""
    d = df[(df.setting == setting_) & (df.recon == "br+gp+cr")]
    claim = {"fixed": "4. Early stopping lowers CR's test error and perplexity against fixed epochs",
             "more real": "4a. … and against training on the held-out windows instead"}[against]
    metrics = [m for m in METRICS if m != "final_error" and m in d.columns]
    parts = [Part(f"{METRICS[m]}, {against} → early stop", findings.changes(d, "variant", against, "early stop", m), -1)
             for m in metrics]
    return judge(claim, parts, "metric's units", claimed_by="claim")


def recipes(profile: str, model: str, progress: bool = False) -> list[tuple]:
    """Finding 4's two verdicts on one model (4: against fixed epochs, 4a: against training on the windows), as
    findings.recipes gives them."""
    df = runs(profile, model, progress)
    return [(df, functools.partial(verdict, against=a, setting_=overfit_setting(profile)), "variant")
            for a in ("fixed", "more real")]


def verdicts(profile: str, model: str, progress: bool = False) -> list[dict]:
    return [judge_(df) for df, judge_, _ in recipes(profile, model, progress)]


def every_recipe(profile: str, model: str) -> list[tuple]:
    """Findings 1–4 on one model: what the summary table prints, `records verify` holds fixed and robust.py tests."""
    return findings.recipes(profile, model) + recipes(profile, model)


def every_verdict(profile: str, model: str) -> list[dict]:
    return [judge_(df) for df, judge_, _ in every_recipe(profile, model)]


def _in(df: pd.DataFrame, setting_: str) -> pd.DataFrame:
    return df[df.setting == setting_] if len(df) else df


def _cr_part(rows: pd.DataFrame, metric: str) -> Part:
    """BR+GP → BR+GP+CR in `metric`, each seed with itself (seeds without the metric left out)."""
    changes = findings.changes(rows, "recon", "br+gp", "br+gp+cr", metric)
    return Part(metric, [x for x in changes if not math.isnan(x)], +1)


def cr_steps(df: pd.DataFrame, setting_: str) -> pd.DataFrame:
    """BR+GP → BR+GP+CR in one setting, a row per metric and a column per variant, in each metric's units: does
    CR's test error rise where training overfits, and does early stopping remove the rise while keeping CR's
    calibration gain? Each cell: mean change [95% CI], the one-sided p that it rises; the first row the seeds."""
    d = _in(df, setting_)
    metrics = [m for m in ["final_error", "holdout_error"] + list(METRICS)[1:] if m in d.columns]
    out = {}
    for v, g in d.groupby("variant", sort=False):
        parts = {m: _cr_part(g, m) for m in metrics}
        out[v] = {"seeds": str(max((p.test.n for p in parts.values()), default=0))} | {
            findings.HEADERS.get(m, m): f"{findings.fmt_change(p)}, p {findings.fmt_p(p.test.p)}"
            for m, p in parts.items() if p.test.n}
    return pd.DataFrame(out).fillna("—")


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """mean ± sd over seeds of the experiment's rows, with the curves' cost in % of each run's pruning time: a
    ratio within a run, where the runs' own seconds vary with what shared the machine (and include any pause)."""
    cols = ["final_error", "holdout_error", "test_error_wikitext2", "test_error_ptb", "ppl_wikitext2", "ppl_ptb",
            "stop_fraction", "monitor_%"]
    out = findings.spread(df.assign(recon=df.recon.map(LABELS)), ["setting", "recon", "variant"],
                          [c for c in cols if c in df.columns])
    return out.rename(columns={"monitor_%": "curves %"})


def curves(record: dict) -> pd.DataFrame:
    """One record's unit curves in long form: unit, first block, epoch, which windows, error, and the stop."""
    rows = []
    for u, c in enumerate(record.get("unit_curves", [])):
        for which in ("train", "heldout"):
            rows += [{"unit": u, "block": c["blocks"][0], "epoch": e, "windows": which, "error": x,
                      "relative": x / c[which][0], "stop": c["stop"]} for e, x in enumerate(c[which])]
    return pd.DataFrame(rows)


def gaps(records_: list[dict]) -> pd.DataFrame:
    """Held-out ÷ train error at the end of each unit (its last epoch), against depth: the generalization gap
    the paper shows once, at the final block."""
    rows = []
    for r in records_:
        c = r["config"]
        for u in r.get("unit_curves", []):
            rows.append({"setting": setting(c), "recon": LABELS[c["recon"]], "seed": c["seed"], "block": u["blocks"][-1],
                         "gap": u["heldout"][-1] / u["train"][-1], "model": c["model"]})
    return pd.DataFrame(rows)


def example(profile: str, progress: bool = True) -> dict | None:
    """The run the curve figure shows: first model and seed, the overfitting setting, BR+GP+CR to its last epoch
    (so the curves show what early stopping would cut); None while it is not in the store."""
    config = next(c for c in grid.early_stop_cells(profile, next(iter(grid.grid(profile).models)))
                  if c.recon == "br+gp+cr" and not c.early_stop and not c.extra_real)
    found = findings.read([config], progress)
    return found[0] if found else None


def answer(df: pd.DataFrame, setting_: str) -> str:
    """The chapter's first two questions in words, from one model's runs in one setting: does CR's
    test error rise with fixed epochs, and with early stopping, and what happens to CR's calibration gain. Every
    number is BR+GP → BR+GP+CR, each seed with itself: mean [95% CI], one-sided p that it rises, n."""
    d = _in(df, setting_)
    if not len(d):
        return stats.NONE

    def step(variant_: str, metric: str) -> str:
        part = _cr_part(d[d.variant == variant_], metric)
        if not part.test.n:
            return f"{METRICS[metric]} {stats.NONE}"
        t, change = part.test, findings.fmt_change(part)
        if t.significant or t.p_opposite < stats.ALPHA:
            p_ = findings.fmt_p(min(t.p, t.p_opposite)).replace("<", "< ")
            return (f"{METRICS[metric]} {'rises' if t.significant else 'falls'} by {change} "
                    f"(p {'' if p_.startswith('<') else '= '}{p_}, n = {t.n})")
        return (f"{METRICS[metric]} changes by {change}, not separable from seed noise (p = {findings.fmt_p(t.p)} "
                f"that it rises, n = {t.n})")

    tests = [m for m in METRICS if m.startswith("test_error")]
    return " ".join(f"With {words}, CR's {step(v, 'final_error')}; its {'; its '.join(step(v, m) for m in tests)}."
                    for v, words in (("fixed", "fixed epochs"), ("early stop", "early stopping")))


def machines(df: pd.DataFrame, setting_: str) -> str:
    """findings.machines on the overfitting setting's runs: the ones the verdicts pair."""
    return findings.machines(_in(df, setting_), "recon")


def cost(df: pd.DataFrame) -> str:
    """What the held-out curves and early stopping cost, in words: windows and seconds, setting by setting; and
    what the more-real control spends the same windows on instead."""
    if not len(df):
        return stats.NONE
    watched = df[df.variant != "more real"]
    return "; ".join(
        f"{setting}: {h} held-out windows beside {n} calibration windows, and measuring the curves took "
        f"{g['monitor_%'].mean():.0f}% of the pruning time (mean over {len(g)} run{'s' * (len(g) > 1)}), where the "
        f"more-real control trains each unit on all {n + h} windows, {(n + h) / n:.2g}× the Adam steps, and measures "
        "nothing" for setting, g in watched.groupby("setting", sort=False)
        for h, n in [(int(g.holdout.max()), int(g.n_calib.max()))])


def read(profile: str, progress: bool = True) -> list[dict]:
    """The runs trained to their last epoch with held-out curves (sweep and experiment): the gap figure's."""
    configs = grid.stop_sweep_cells(profile) + [c for m in grid.grid(profile).models
                                                for c in grid.early_stop_cells(profile, m)]
    configs = list({c.key(): c for c in configs if c.holdout and not c.early_stop}.values())
    return findings.read(configs, progress)
