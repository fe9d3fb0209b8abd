"""The paper's three findings (method.md §7) as tables of run records, with seeds, and the rule that turns
paired per-seed effects into a verdict.

Every config comes from reconlib.grid (`cell`), so the pages read exactly the runs that `grid` computes;
a run missing from the store is computed (records.run) and recorded.
"""
from __future__ import annotations

import math

import pandas as pd

from . import grid, paper, records
from .config import CRITERIA, SCHEMES, RunConfig

PAPER_MODELS = ("llama-7b", "opt-125m")
STEPS = (("lr", "br"), ("br", "br+gp"), ("br+gp", "br+gp+cr"))
LABELS = {"lr": "LR", "br": "BR", "br+gp": "BR+GP", "br+gp+cr": "BR+GP+CR"}
SUBSET = {"smoke": 2, "cpu": 32, "paper": 0}  # perplexity windows every run reports (0 = whole test set)


# ------------------------------------------------------------------ the verdict rule
RULE = ("A part of a finding **holds** on a model when its paired per-seed effect (same seed, so same "
        "calibration windows, with and without the step) has the paper's sign for every seed and its mean "
        "exceeds twice its standard error; it **does not hold** when the same is true with the opposite sign; "
        "otherwise it is **not separable from seed noise** (always so with fewer than two seeds). A finding of "
        "several parts holds when every part holds, does not hold when any part does not hold, and is not "
        "separable from seed noise otherwise.")


def verdict(effects) -> str:
    """The rule above, for one part: `effects` are per-seed effects signed so that the paper's claim is > 0."""
    e = [float(x) for x in effects]
    if len(e) < 2:
        return "not separable from seed noise"
    mean = sum(e) / len(e)
    se = math.sqrt(sum((x - mean) ** 2 for x in e) / (len(e) - 1) / len(e))
    if all(x > 0 for x in e) and mean > 2 * se:
        return "holds"
    if all(x < 0 for x in e) and -mean > 2 * se:
        return "does not hold"
    return "not separable from seed noise"


def combine(words) -> str:
    """A finding of several parts: all hold → holds; any does not hold → does not hold; else not separable."""
    words = list(words)
    if words and all(w == "holds" for w in words):
        return "holds"
    return "does not hold" if "does not hold" in words else "not separable from seed noise"


def mean_se(effects) -> str:
    e = [float(x) for x in effects]
    mean = sum(e) / len(e)
    if len(e) < 2:
        return f"{mean:+.3g} (n=1)"
    se = math.sqrt(sum((x - mean) ** 2 for x in e) / (len(e) - 1) / len(e))
    return f"{mean:+.3g} ± {se:.2g} (n={len(e)})"


# ------------------------------------------------------------------ runs → rows
def ppl(record: dict, corpus: str, windows: int) -> float:
    """Perplexity over the first `windows` windows (0 = all evaluated), from the per-window mean NLLs."""
    nll = record["ppl_windows"][corpus]
    nll = nll[:windows] if windows else nll
    return math.exp(sum(nll) / len(nll))


def row(record: dict, subset: int) -> dict:
    c = record["config"]
    out = {"model": c["model"], "seed": c["seed"], "criterion": c["criterion"], "sparsity": c["sparsity"],
           "recon": c["recon"], "epochs": c["epochs"], "n_calib": c["n_calib"], "self_gen": c["self_gen"],
           "final_error": record["final_error"], "final_error_from1": record["block_error_from1"][-1]}
    # the part of the final error at position 0 (of T): 1 − (mean error over positions 1..T−1) · (T−1) / T / mean
    out["position0_share_%"] = 100 * (1 - out["final_error_from1"] * (c["seq_len"] - 1) / c["seq_len"] / out["final_error"])
    out |= {f"test_error_{k}": v for k, v in record["test_final_error"].items()}
    out |= {f"ppl_{k}": ppl(record, k, subset) for k in record["ppl_windows"]}
    if record.get("zeroshot"):
        out["mean_acc"] = 100 * record["zeroshot"]["mean_acc"]
    out["seconds"] = record["seconds"]["prune"]
    out["peak_memory_mb"] = record["peak_memory_mb"]
    return out


def table(configs: list[RunConfig], profile: str, progress: bool = True) -> pd.DataFrame:
    """One row per config: its record's headline numbers (computing the runs that are missing)."""
    return pd.DataFrame([row(records.run(c, progress=progress), SUBSET[profile]) for c in configs])


# the pages' column heads: short, so that a table of six metrics fits the page
HEADERS = {"final_error": "final error", "final_error_from1": "w/o pos. 0", "reduction_vs_lr_%": "cut vs LR %",
           "position0_share_%": "pos. 0 share %", "test_error_wikitext2": "test err. WT2", "test_error_ptb": "test err. PTB",
           "ppl_wikitext2": "ppl WT2", "ppl_ptb": "ppl PTB", "peak_memory_mb": "peak MB"}


def spread(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """mean ± sd over seeds, n stated: one row per group, one text column per metric (heads from HEADERS)."""
    def fmt(s):
        return f"{s.mean():.3g} ± {s.std():.2g}" if len(s) > 1 else f"{s.mean():.3g}"
    out = df.groupby(by, sort=False)[metrics].agg(fmt)
    out.insert(0, "n", df.groupby(by, sort=False).size())
    return out.rename(columns=HEADERS)


def paired(df: pd.DataFrame, key: str, before, after, metric: str, sign: int = 1) -> list[float]:
    """Per-seed effect sign · (metric before − metric after), matched on seed."""
    b = df[df[key] == before].set_index("seed")[metric]
    a = df[df[key] == after].set_index("seed")[metric]
    return [sign * (b[s] - a[s]) for s in sorted(set(a.index) & set(b.index))]


# ------------------------------------------------------------------ finding 1
def error_reduction(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    df = table(grid.error_reduction_cells(profile, model), profile, progress)
    lr = df[df.recon == "lr"].set_index(["criterion", "seed"]).final_error
    df["reduction_vs_lr_%"] = [100 * (1 - e / lr[(c, s)]) for c, s, e in zip(df.criterion, df.seed, df.final_error)]
    return df


def paper_errors() -> pd.DataFrame:
    """The paper's final errors: a row per criterion, a column per (model, scheme) in the schemes' order."""
    return pd.DataFrame({(m, LABELS[s]): [paper.lookup(m, c, s, "final_error") for c in CRITERIA]
                         for m in PAPER_MODELS for s in SCHEMES}, index=pd.Index(CRITERIA, name="criterion"))


def verdict_error_reduction(df: pd.DataFrame) -> dict:
    """Each of LR→BR, BR→BR+GP, BR+GP→BR+GP+CR lowers the final error, for every criterion."""
    parts = {}
    for c in df.criterion.unique():
        d = df[df.criterion == c]
        for a, b in STEPS:  # relative reduction per seed, in %
            e = [100 * x / d[(d.recon == a) & (d.seed == s)].final_error.iloc[0]
                 for x, s in zip(paired(d, "recon", a, b, "final_error"), sorted(d.seed.unique()))]
            parts[f"{c} {LABELS[a]}→{LABELS[b]}"] = (e, verdict(e))
    return _verdict("1. BR, GP and CR each lower the final error", parts, "error reduction, %")


def _verdict(finding: str, parts: dict, unit: str) -> dict:
    table = pd.DataFrame([{"part": k, f"effect ({unit})": mean_se(e), "verdict": w} for k, (e, w) in parts.items()])
    return {"finding": finding, "parts": table, "verdict": combine(w for _, w in parts.values())}


# ------------------------------------------------------------------ finding 2
def overfitting(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    """SparseGPT BR+GP and BR+GP+CR, every seed (the rows finding 1 computed)."""
    configs = [c for c in grid.error_reduction_cells(profile, model)
               if c.criterion == "sparsegpt" and c.recon in ("br+gp", "br+gp+cr")]
    return table(configs, profile, progress)


def verdict_overfitting(df: pd.DataFrame) -> dict:
    """CR lowers the calibration error, raises the test error on every test set, and raises perplexity."""
    parts = {"calibration error falls": paired(df, "recon", "br+gp", "br+gp+cr", "final_error")}
    for col in [c for c in df.columns if c.startswith(("test_error_", "ppl_"))]:
        what = col.replace("test_error_", "test error ").replace("ppl_", "perplexity ")
        parts[f"{what} rises"] = paired(df, "recon", "br+gp", "br+gp+cr", col, sign=-1)
    return _verdict("2. CR overfits: calibration error falls, test error and perplexity rise (SparseGPT)",
                    {k: (e, verdict(e)) for k, e in parts.items()}, "BR+GP → BR+GP+CR")


def capacity(profile: str, df: pd.DataFrame) -> pd.DataFrame:
    """Ours beside the paper's models: how many weights a CR unit (two blocks' linears) fits per calibration
    token, and how far the test error sits above the calibration error after BR+GP (`df`: `overfitting`'s rows,
    mean over seeds). The more weights per token, the more room to fit the windows rather than the language;
    LLaMA-7B overfits with CR and OPT-125M does not."""
    from . import arch, models

    rows = []
    for model in grid.grid(profile).models:
        net, _ = models.load_model(model)
        weights = sum(m.weight.numel() for m in arch.linears(arch.blocks(net)[0]).values())
        config, d = grid.base(profile, model), df[(df.model == model) & (df.recon == "br+gp")]
        rows.append((model, weights, config.n_calib * config.seq_len, (d.test_error_wikitext2 / d.final_error).mean()))
    for m, weights in paper.BLOCK_WEIGHTS.items():
        ratio = [paper.lookup(m, "sparsegpt", "br+gp", k) for k in ("test_error_wikitext2", "final_error")]
        rows.append((f"{m} (paper)", weights, paper.CALIB_TOKENS, ratio[0] / ratio[1]))
    out = pd.DataFrame(rows, columns=["model", "weights a block", "calib. tokens", "test ÷ calib. error"])
    out.insert(3, "weights per token, CR", (2 * out["weights a block"] / out["calib. tokens"]).round().astype(int))
    return out.set_index("model")


def sweep(profile: str, model: str, field: str, progress: bool = True) -> pd.DataFrame:
    return table(grid.sweep_cells(profile, model, field), profile, progress)


# ------------------------------------------------------------------ finding 3
def verdict_self_generated(df: pd.DataFrame) -> dict:
    """Adding the most self-generated windows lowers the test error on every set and the perplexity."""
    most = df.self_gen.max()
    parts = {}
    for col in [c for c in df.columns if c.startswith(("test_error_", "ppl_"))]:
        what = col.replace("test_error_", "test error ").replace("ppl_", "perplexity ")
        parts[f"{what} falls"] = paired(df, "self_gen", 0, most, col)
    return _verdict(f"3. Self-generated calibration (+{most}) lowers test error and perplexity",
                    {k: (e, verdict(e)) for k, e in parts.items()}, f"0 → {most} self-generated")


def dense(profile: str, model: str, full: bool = False) -> dict:
    return records.dense(grid.dense_cell(profile, model, full))


def curves(profile: str, model: str, data: str = "calibration") -> pd.DataFrame:
    """Per-block errors in long form (model, seed, criterion, recon, block, error): the compounding."""
    out = []
    for c in grid.error_reduction_cells(profile, model):
        r = records.run(c)
        errors = r["block_error"] if data == "calibration" else r["test_block_error"][data]
        out += [{"model": model, "seed": c.seed, "criterion": c.criterion, "recon": c.recon, "block": i, "error": e}
                for i, e in enumerate(errors)]
    return pd.DataFrame(out)
