"""The paper's three findings (method.md §7) as tables of run records, with seeds, and the rule that turns
paired per-seed effects into a verdict.

Every config comes from reconlib.grid (`cell`), so the pages read exactly the runs that `grid` computes;
a run missing from the store is computed (records.run) and recorded.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import pandas as pd

from . import grid, paper, records, stats
from .config import CRITERIA, SCHEMES, RunConfig, from_dict

PAPER_MODELS = ("llama-7b", "opt-125m")
STEPS = (("lr", "br"), ("br", "br+gp"), ("br+gp", "br+gp+cr"))
LABELS = {"lr": "LR", "br": "BR", "br+gp": "BR+GP", "br+gp+cr": "BR+GP+CR"}


# ------------------------------------------------------------------ the verdict rule (stats.py)
RULE = ("Each part of a finding is a paired comparison: the same seed, so the same calibration windows, with and "
        "without the step. Its per-seed changes get a one-sided paired t-test at α = 0.05 in the paper's "
        "direction, reported as the mean change with its two-sided 95% confidence interval, the p-value and n (a one-sided "
        "p between 0.025 and 0.05 is significant while its interval just reaches past 0). A finding "
        "**holds** on a model when every part is significant in the paper's direction; it **does not hold** when "
        "some part is significant in the opposite direction after a Holm correction across the finding's parts; "
        "otherwise it is **not separable from seed noise** (always so with one seed); with no runs yet it is **not "
        "measured yet**. A null effect would show as "
        "intervals that straddle 0 and p-values spread evenly over (0, 1).")


@dataclass(frozen=True)
class Part:
    """One paired comparison: per-seed changes (after − before, in the metric's units or %) and the paper's
    direction (-1: it falls, +1: it rises)."""
    name: str
    changes: list
    direction: int

    @functools.cached_property  # read a dozen times a verdict, and verdicts are redrawn thousands of times
    def test(self) -> stats.Test:
        return stats.t_test([self.direction * c for c in self.changes])


def fmt_change(part: Part) -> str:
    """mean change [95% CI], in the change's own sign (so a rise reads +, a fall −)."""
    t, d = part.test, part.direction
    if t.n == 0:
        return stats.NONE

    def signed(x: float) -> str:
        return f"{x + 0.0:+.3g}"  # + 0.0 turns the −0 of identical runs (all changes 0, direction −1) into 0

    if t.n < 2:
        return f"{signed(t.mean * d)} (one seed)"
    lo, hi = sorted((t.ci[0] * d, t.ci[1] * d))
    return f"{signed(t.mean * d)} [{signed(lo)}, {signed(hi)}]"


def fmt_p(p: float) -> str:
    return "—" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.2g}"


def judge(finding: str, parts: list[Part], unit: str, claimed_by: str = "paper") -> dict:
    """The rule applied to a finding's parts → {finding, verdict, parts (a table), words (part → verdict)};
    `claimed_by` heads the column of each part's claimed direction (the paper's, or ours beyond it)."""
    verdict, words = stats.verdicts([p.test for p in parts])
    table = pd.DataFrame([{"part": p.name, claimed_by: "falls" if p.direction < 0 else "rises",
                           f"change ({unit}), 95% CI": fmt_change(p), "p": fmt_p(p.test.p), "n": p.test.n,
                           "verdict": w} for p, w in zip(parts, words)])
    return {"finding": finding, "verdict": verdict, "parts": table, "words": dict(zip((p.name for p in parts), words)),
            "tests": {p.name: p for p in parts}}


PRIMARY = {"1": "sparsegpt final error, LR → BR", "2": "WikiText-2 perplexity, BR+GP → BR+GP+CR",
           "3": "WikiText-2 perplexity, real → generated", "3a": "WikiText-2 perplexity, steps → generated",
           "3b": "WikiText-2 perplexity, more real → generated", "4": "WikiText-2 perplexity, fixed → early stop",
           "4a": "WikiText-2 perplexity, more real → early stop"}


def number(v: dict) -> str:
    """'2' for finding 2's verdict, '3a' for its first control."""
    return v["finding"].split(" ", 1)[0].rstrip(".")


def primary(v: dict) -> str:
    """The part a finding is read by when all the book's verdicts are corrected together (robust.primary_holm),
    named before any run: the paper's headline of each claim. LR → BR is the step that makes reconstruction
    (finding 1), and perplexity is what a reader of findings 2–4 prunes for."""
    return PRIMARY[number(v)]


def deciding(v: dict) -> str:
    """The part that decides a verdict, with its numbers: the weakest part of one that holds, the part against
    it of one that does not, and the part furthest from significance otherwise."""
    part = deciding_part(v)
    if part is None:  # a finding none of whose runs is in the store yet
        return stats.NONE
    if v["verdict"] == stats.FAILS:  # its p is the one-sided test against the paper, before Holm's correction
        return (f"{part.name}: {fmt_change(part)}, p against = {fmt_p(part.test.p_opposite)} ≤ "
                f"{stats.ALPHA / len(v['tests']):.2g} (Holm)")
    return f"{part.name}: {fmt_change(part)}, p = {fmt_p(part.test.p)}"


def deciding_part(v: dict) -> Part | None:
    """The Part `deciding` words (None before any run)."""
    parts = list(v["tests"].values())
    if not parts:
        return None
    if v["verdict"] == stats.FAILS:
        return min(parts, key=lambda p: p.test.p_opposite)
    return max(parts, key=lambda p: (math.isnan(p.test.p), p.test.p))


# ------------------------------------------------------------------ runs → rows
def nll_windows(record: dict, corpus: str, windows: int) -> list[float]:
    """The per-window mean NLLs a row reads: the first `windows` of a record evaluated on the whole test set (so
    that it reads as the profile's other runs), else all it evaluated."""
    nll = record["ppl_windows"][corpus]
    return nll[:windows] if windows and not record["config"]["max_eval_windows"] else nll


def ppl(record: dict, corpus: str, windows: int) -> float:
    """Perplexity over the windows `nll_windows` reads."""
    nll = nll_windows(record, corpus, windows)
    return math.exp(sum(nll) / len(nll))


COLUMNS = ["model", "seed", "criterion", "sparsity", "seq_len", "refit", "allocation", "recon", "epochs", "n_calib", "self_gen", "extra_real",
           "final_error", "final_error_from1", "position0_share_%", "test_error_wikitext2", "test_error_ptb",
           "ppl_wikitext2", "ppl_ptb", "seconds", "seconds_total", "peak_memory_mb", "cpu", "source", "windows", "window_len"]
UNNAMED = "unnamed"  # the CPU of a record older than machine fingerprints


def kernel_path(machine: dict) -> str:
    """The CPU a record ran on, as far as it decides the record's last bits: the model name, the ISA torch
    dispatched to, and the thread count. The name alone is not enough: machines sold as "AMD EPYC" run AVX2 on
    some hosts and AVX-512 on others, and a reduction over 2 threads adds in another order than over 1."""
    name = machine.get("cpu_model") or UNNAMED
    detail = [machine["cpu_capability"]] if machine.get("cpu_capability") else []
    if n := machine.get("threads"):
        detail.append(f"{n} thread{'s' * (n != 1)}")
    return f"{name} ({', '.join(detail)})" if detail and name != UNNAMED else name


def row(record: dict, subset: int) -> dict:
    c = record["config"]
    out = {"model": c["model"], "seed": c["seed"], "criterion": c["criterion"], "sparsity": c["sparsity"],
           "seq_len": c["seq_len"], "refit": c.get("refit", False), "allocation": c.get("allocation", "uniform"),
           "recon": c["recon"], "epochs": c["epochs"], "n_calib": c["n_calib"], "self_gen": c["self_gen"],
           "extra_real": c.get("extra_real", 0),
           "final_error": record["final_error"], "final_error_from1": record["block_error_from1"][-1]}
    # the part of the final error at position 0 (of T): 1 − (mean error over positions 1..T−1) · (T−1) / T / mean
    out["position0_share_%"] = 100 * (1 - out["final_error_from1"] * (c["seq_len"] - 1) / c["seq_len"] / out["final_error"])
    out |= {f"test_error_{k}": v for k, v in record["test_final_error"].items()}
    out |= {f"ppl_{k}": ppl(record, k, subset) for k in record["ppl_windows"]}
    if record.get("zeroshot"):
        out["mean_acc"] = 100 * record["zeroshot"]["mean_acc"]
    out["seconds"], out["seconds_total"] = record["seconds"]["prune"], record["seconds"]["total"]
    out["peak_memory_mb"] = record["peak_memory_mb"]
    out["cpu"] = kernel_path(record.get("machine", {}))  # a pair's arms may differ in it
    out["source"] = record.get("source_digest")
    out["key"] = record.get("key")  # the record's file stem: records.mixed names the files of a mixed pair
    # the per-window values the evaluation metrics are means of, for the bootstrap over windows (robust.py)
    out["windows"] = {f"ppl_{k}": nll_windows(record, k, subset) for k in record["ppl_windows"]} | \
        {f"test_error_{k}": v for k, v in record.get("test_error_windows", {}).items()}
    # and their length in tokens, for how many such windows the whole test set holds (robust.sizing)
    out["window_len"] = {m: c["seq_len"] if m.startswith("test_error_") else from_dict(c).eval_window
                         for m in out["windows"]}
    return out


def machines(df: pd.DataFrame, key: str, within: tuple = ()) -> str:
    """In words, the seeds whose paired runs (the groups mixed_pairs reads: one seed, and criterion or setting,
    across the values of `key`) come from more than one CPU model. Kernel rounding differs between CPUs (up to ~2%
    past SmolLM2's block 11: the reproducibility page), so such a pair's change carries that difference besides
    the method's effect. Two criteria of one seed on two CPUs are no such pair: no verdict compares them."""
    if not len(df) or "cpu" not in df:
        return stats.NONE

    def names(cpus) -> str:
        return "; ".join("older records that name none" if c == UNNAMED else c for c in sorted(cpus))

    mixed = df[df.groupby(_paired_by(df, key, within), sort=False).cpu.transform("nunique") > 1]
    if not len(mixed):
        return f"each pair's runs come from one CPU model (over all pairs: {names(df.cpu.unique())})"
    return "; ".join(f"{m} seed{'s' * (g.seed.nunique() > 1)} {', '.join(map(str, g.seed.unique()))} "
                     f"pair{'s' * (g.seed.nunique() == 1)} runs of different CPUs ({names(g.cpu.unique())})"
                     for m, g in mixed.groupby("model", sort=False)) + \
        (": their changes carry the CPUs' difference in kernel rounding (up to ~2%, {doc}`../reproducibility`) "
         "besides the method's effect")


def _paired_by(df: pd.DataFrame, key: str, within: tuple) -> list[str]:
    """The columns a verdict's paired runs share: the seed, and criterion or setting, besides `within`. Not the
    scheme, even where `key` is another column: finding 4 reads CR's step (BR+GP → BR+GP+CR) in each variant, and
    OWL's section its gain at LR against at BR+GP, so a seed's runs across schemes are one group."""
    return ["model", "seed"] + [c for c in ("criterion", "setting") if c in df and c != key] + list(within)


def mixed_pairs(df: pd.DataFrame, key: str, within: tuple = ()) -> pd.DataFrame:
    """The groups of runs a verdict compares (the same seed, and criterion or setting, across the values of `key`;
    and the same value of each column in `within`, as the ladder's points) whose runs differ in code version
    (source_digest) or CPU model: each is a pair whose change carries more than the method's effect. Empty is the
    target."""
    by = _paired_by(df, key, within)
    if not len(df):
        return pd.DataFrame(columns=by + ["differs in"])
    rows = []
    for group, g in df.groupby(by, sort=False):
        what = [name for name, col in (("code version", "source"), ("CPU", "cpu")) if g[col].nunique(dropna=False) > 1]
        if what:
            rows.append(dict(zip(by, group)) | {"differs in": " and ".join(what)})
    return pd.DataFrame(rows, columns=by + ["differs in"])


def mixing(df: pd.DataFrame, key: str, within: tuple = ()) -> str:
    """For the page: "k of n", the groups of paired runs (mixed_pairs) that mix code versions or CPU models, of
    all the groups that pair two or more values of `key`."""
    by = _paired_by(df, key, within)
    n = int((df.groupby(by, sort=False)[key].nunique() > 1).sum()) if len(df) else 0
    return f"{len(mixed_pairs(df, key, within))} of {n}"


def mixed_keys(df: pd.DataFrame, key: str) -> set[str]:
    """The record keys of every group mixed_pairs lists: the whole group, since no arm can be recomputed under
    the code version or CPU another arm had."""
    pairs = mixed_pairs(df, key)
    if not len(pairs):
        return set()
    by = [c for c in pairs.columns if c != "differs in"]
    return set(df.merge(pairs[by], on=by).key.dropna())


def relative(df: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Each error in % of the dense last block's mean square (its dense record of the verdict runs' evaluation):
    Gemma 3's residual stream runs ~500× SmolLM2's, and these read on one scale. Calibration error against
    WikiText-2's scale (the calibration text is WikiText-2's validation split)."""
    g = grid.grid(profile)
    out = df.copy()
    for model in df.model.unique():
        record = records.read(records.dense_path(grid.base(profile, model, **g.evaluation))) if g.evaluation else None
        scale = (record or {}).get("output_mean_square")
        if not scale:
            continue
        rows = out.model == model
        for metric, corpus in (("final_error", "wikitext2"), ("test_error_wikitext2", "wikitext2"),
                               ("test_error_ptb", "ptb")):
            if metric in out and corpus in scale:
                out.loc[rows, metric + "_rel_%"] = 100 * out.loc[rows, metric] / scale[corpus]
    return out


def computing() -> bool:
    """Whether the findings compute the runs missing from the store (the default), or read the store as it is
    and leave them out (RECONLIB_COMPUTE=0, as `make book` does: `make records` computes them side by side)."""
    return os.environ.get("RECONLIB_COMPUTE", "1") != "0"


def table(configs: list[RunConfig], profile: str, progress: bool = True) -> pd.DataFrame:
    """One row per config: its record's headline numbers (computing the runs that are missing, unless not
    `computing()`: then a missing run has no row)."""
    # perplexity over the windows every run of the profile reports (its max_eval_windows; 0 = whole test set)
    subset = grid.base(profile).max_eval_windows
    rows = [row(r, subset) for r in read(configs, progress)]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=COLUMNS)  # the columns, before any run is in


def read(configs: list[RunConfig], progress: bool = True) -> list[dict]:
    """The records of `configs`: computed where missing, unless not `computing()`: then only those stored."""
    found = [records.run(c, progress=progress) if computing() else records.stored(c) for c in configs]
    return [r for r in found if r is not None]


# the pages' column heads: short, so that a table of six metrics fits the page
HEADERS = {"final_error": "final error", "final_error_from1": "w/o pos. 0", "reduction_vs_lr_%": "cut vs LR %",
           "position0_share_%": "pos. 0 share %", "test_error_wikitext2": "test err. WT2", "test_error_ptb": "test err. PTB",
           "ppl_wikitext2": "ppl WT2", "ppl_ptb": "ppl PTB", "peak_memory_mb": "peak MB",
           "holdout_error": "held-out err.", "stop_fraction": "stop", "final_error_rel_%": "final err. % ȳ²",
           "test_error_wikitext2_rel_%": "test WT2 % ȳ²", "test_error_ptb_rel_%": "test PTB % ȳ²"}


def spread(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """mean ± sd over seeds, n stated: one row per group, one text column per metric (heads from HEADERS)."""
    def fmt(s):
        s = s.dropna()  # a metric the rows do not have (held-out error without held-out windows): a dash
        return "—" if not len(s) else f"{s.mean():.3g} ± {s.std():.2g}" if len(s) > 1 else f"{s.mean():.3g}"
    metrics = [m for m in metrics if m in df]  # a scale the store has no dense record for yet (relative): left out
    out = df.groupby(by, sort=False)[metrics].agg(fmt)
    out.insert(0, "n", df.groupby(by, sort=False).size())
    return out.rename(columns=HEADERS)


def changes(df: pd.DataFrame, key: str, before, after, metric: str, relative: bool = False) -> list[float]:
    """Per-seed change of `metric` from the rows where key == before to those where key == after, matched on
    seed: after − before, or in % of before (`relative`)."""
    # plain dicts, not DataFrame filters: the robustness checks call this some 10^4 times a page
    arm = {before: {}, after: {}}
    for k, s, x in zip(df[key], df["seed"], df[metric]):
        if k in arm:
            arm[k][s] = x
    b, a = arm[before], arm[after]
    return [(a[s] - b[s]) * (100 / b[s] if relative else 1) for s in sorted(a.keys() & b.keys())]


# ------------------------------------------------------------------ finding 1
def error_reduction(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    df = table(grid.error_reduction_cells(profile, model), profile, progress)
    lr = df[df.recon == "lr"].set_index(["criterion", "seed"]).final_error
    df["reduction_vs_lr_%"] = [100 * (1 - e / lr.get((c, s), math.nan)) for c, s, e in zip(df.criterion, df.seed, df.final_error)]
    return df


def paper_errors() -> pd.DataFrame:
    """The paper's final errors: a row per criterion, a column per (model, scheme) in the schemes' order."""
    df = pd.DataFrame({(m, LABELS[s]): [paper.lookup(m, c, s, "final_error") for c in CRITERIA]
                       for m in PAPER_MODELS for s in SCHEMES}, index=pd.Index(CRITERIA, name="criterion"))
    return df.astype(object).where(df.notna(), "—")  # a cell the paper does not report


def verdict_error_reduction(df: pd.DataFrame) -> dict:
    """Each of LR→BR, BR→BR+GP, BR+GP→BR+GP+CR lowers the final error, for every criterion: the per-seed change
    of each step, in % of the error before it (not the cumulative cut vs LR of the table)."""
    parts = [Part(f"{c} final error, {LABELS[a]} → {LABELS[b]}", changes(df[df.criterion == c], "recon", a, b,
                                                                         "final_error", relative=True), -1)
             for c in df.criterion.unique() for a, b in STEPS]
    return judge("1. BR, GP and CR each lower the final error", parts, "% of the step's start")


# ------------------------------------------------------------------ finding 2
def overfitting(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    """SparseGPT BR+GP and BR+GP+CR on finding 2's seeds, with its evaluation (grid.overfitting_cells)."""
    return table(grid.overfitting_cells(profile, model), profile, progress)


METRICS = {"final_error": "calibration error", "test_error_wikitext2": "WikiText-2 test error",
           "test_error_ptb": "PTB test error", "ppl_wikitext2": "WikiText-2 perplexity", "ppl_ptb": "PTB perplexity"}


def measured(df: pd.DataFrame) -> list[str]:
    """Finding 2's parts for a table: the calibration error (always, so a table of no runs reads "not measured
    yet"), then each test metric its runs measure."""
    return ["final_error"] + [c for c in METRICS if c in df.columns and c != "final_error"]


def verdict_overfitting(df: pd.DataFrame) -> dict:
    """LLaMA-7B's regime: CR lowers the calibration error, raises the test error on every test set, and raises
    perplexity. `regime` then reads each part against both of the paper's models."""
    step = f"{LABELS['br+gp']} → {LABELS['br+gp+cr']}"
    parts = [Part(f"{METRICS[m]}, {step}", changes(df, "recon", "br+gp", "br+gp+cr", m), -1 if m == "final_error" else 1)
             for m in measured(df)]
    v = judge("2. CR overfits: calibration error falls, test error and perplexity rise (SparseGPT)", parts,
              "metric's units")
    return v | regime(v, measured(df))


def regime(v: dict, metrics: list[str]) -> dict:
    """Which of the paper's two regimes a model's parts match: LLaMA-7B overfits (calibration error falls, test
    error and perplexity rise), OPT-125M does not (all fall). A part moves ↑ or ↓ when its one-sided test in
    that direction is significant, and ≈ otherwise; the paper's cells it does not report are —."""
    def arrow(before, after):
        return "—" if before is None or after is None else "↑" if after > before else "↓"

    rows, ours = [], []
    for m, (name, part) in zip(metrics, v["tests"].items()):
        t = part.test
        move = "≈" if t.n < 2 else ("↑" if part.direction > 0 else "↓") if t.p < stats.ALPHA else \
            ("↓" if part.direction > 0 else "↑") if t.p_opposite < stats.ALPHA else "≈"
        paper_moves = {pm: arrow(*(paper.lookup(pm, "sparsegpt", r, m) for r in ("br+gp", "br+gp+cr")))
                       for pm in PAPER_MODELS}
        rows.append({"part": name, "ours": move, "LLaMA-7B": paper_moves["llama-7b"], "OPT-125M": paper_moves["opt-125m"]})
        ours.append(move)
    table = pd.DataFrame(rows)
    matches = [label for label, col in (("LLaMA-7B (overfits)", "LLaMA-7B"), ("OPT-125M (does not)", "OPT-125M"))
               if all(o == p for o, p in zip(table.ours, table[col]) if p != "—")]
    if all(part.test.n < 2 for part in v["tests"].values()):
        return {"regime": table, "matches": stats.NONE}
    return {"regime": table, "matches": matches[0] if len(matches) == 1 else
            "both (the parts that differ are not reported by the paper)" if matches else "neither"}


def capacity(profile: str, df: pd.DataFrame) -> pd.DataFrame:
    """Ours beside the paper's models: how many weights a CR unit (two blocks' linears) fits per calibration
    token, and how far the test error sits above the calibration error after BR+GP (`df`: `overfitting`'s rows,
    mean over seeds). The more weights per token, the more room to fit the windows rather than the language;
    LLaMA-7B overfits with CR and OPT-125M does not."""
    from . import arch, models

    rows = []
    for model in grid.grid(profile).models:
        net = models.skeleton(model)
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
def self_generated(profile: str, model: str, progress: bool = True) -> pd.DataFrame:
    """Finding 3's runs and its controls on every seed, one row each, `variant` naming which (grid.self_gen_cells)."""
    cells = grid.self_gen_cells(profile, model)
    parts = [table(c, profile, progress).assign(variant=name) for name, c in cells.items()]
    return pd.concat(parts, ignore_index=True) if any(len(p) for p in parts) else parts[0]


def self_gen_sample(profile: str, model: str) -> str:
    """The opening of what the model wrote for its first seed's generated windows: from the verdict run, or the
    self_gen sweep's run of the same count (the text depends on the model, seed and count, not the evaluation)."""
    generated = grid.self_gen_cells(profile, model)["generated"][0]
    same = [c for c in grid.sweep_cells(profile, model, "self_gen") if (c.seed, c.self_gen) == (generated.seed, generated.self_gen)]
    found = [r for r in read([generated] + same, progress=False) if r.get("self_gen_sample")]
    return found[0]["self_gen_sample"] if found else f"({stats.NONE}: no run with generated windows in the store)"


def more_real_sources(profile: str, model: str) -> str:
    """How independent finding 3's more-real windows are of the real ones, over the model's seeds, in words: the
    corpus's documents, how many the n real windows are cut from, and the share of the k more-real windows cut from
    one of those (a window never overlaps a real one's tokens, but the same article is the same topic and style)."""
    from . import data, models

    cells = grid.self_gen_cells(profile, model)["more real"]
    tokenizer, bos = models.load_tokenizer(model)
    real, shared = [], []
    for c in cells:
        docs = data.window_documents(c.calib, tokenizer, c.n_calib + c.extra_real, c.seq_len, c.seed, bos)
        first = set(docs[:c.n_calib])
        real.append(len(first))
        shared.append(sum(d in first for d in docs[c.n_calib:]) / c.extra_real)
    span = lambda xs, f="{}": f.format(min(xs)) + (f"–{f.format(max(xs))}" if min(xs) != max(xs) else "")  # noqa: E731
    c = cells[0]
    return (f"the {c.n_calib} real windows come from {span(real)} of the {len(data.documents(c.calib, 'train'))} "
            f"documents of {c.calib}, and {span(shared, '{:.0%}')} of the {c.extra_real} more-real windows are cut "
            f"from a document a real window also comes from ({model}, {len(cells)} seeds)")


def verdict_self_generated(df: pd.DataFrame, against: str = "real") -> dict:
    """The generated windows lower the test error on every set and the perplexity, compared with `against`:
    "real" (the paper's claim), "steps" (the same Adam steps without generated text) or "more real" (as many
    more real windows, for reconstruction only)."""
    k = int(df.self_gen.max()) if len(df) else 0  # before any run: "not measured yet"
    claim = {"real": f"3. Adding {k} self-generated windows lowers test error and perplexity",
             "steps": "3a. … more than training as many steps on the real windows alone",
             "more real": f"3b. … more than adding {k} more real windows"}[against]
    parts = [Part(f"{METRICS[m]}, {against} → generated", changes(df, "variant", against, "generated", m), -1)
             for m in measured(df)[1:]]
    return judge(claim, parts, "metric's units")


def dense(profile: str, model: str, full: bool = False) -> dict | None:
    """The dense record (computed where missing, unless not `computing()`: then None where the store lacks it)."""
    cell = grid.dense_cell(profile, model, full)
    return records.dense(cell) if computing() else records.read(records.dense_path(cell))


def curves(profile: str, model: str, data: str = "calibration") -> pd.DataFrame:
    """Per-block errors in long form (model, seed, criterion, recon, block, error): the compounding."""
    out = []
    for r in read(grid.error_reduction_cells(profile, model)):
        c = r["config"]
        errors = r["block_error"] if data == "calibration" else r["test_block_error"][data]
        out += [{"model": model, "seed": c["seed"], "criterion": c["criterion"], "recon": c["recon"], "block": i,
                 "error": e} for i, e in enumerate(errors)]
    return pd.DataFrame(out)


def words(verdicts_: list[dict]) -> dict:
    """(finding, part) → verdict word, for every part of these verdicts: what `records verify` holds fixed."""
    return {(v["finding"], part): word for v in verdicts_ for part, word in {**v["words"], "verdict": v["verdict"]}.items()}


def recipes(profile: str, model: str, progress: bool = False) -> list[tuple]:
    """Each finding's verdict on one model as (its rows, the function that judges them, the column its arms
    differ in): what the pages print, and what robust.py alters to test them."""
    f3 = self_generated(profile, model, progress)
    return [(error_reduction(profile, model, progress), verdict_error_reduction, "recon"),
            (overfitting(profile, model, progress), verdict_overfitting, "recon")] + [
            (f3, functools.partial(verdict_self_generated, against=a), "variant") for a in ("real", "steps", "more real")]


def verdicts(profile: str, model: str, progress: bool = False) -> list[dict]:
    """Every finding's verdict on one model: 1, 2, and 3 with its two controls."""
    return [judge_(df) for df, judge_, _ in recipes(profile, model, progress)]
