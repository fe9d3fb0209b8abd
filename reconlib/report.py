"""Markdown tables for the book, generated from the run records (never typed in)."""
from __future__ import annotations

import functools
import time
from collections import Counter

import pandas as pd

from . import data, findings, grid, models, provenance, records, robust, stats, stopping, verify
from . import paper as paper_
from .config import SCHEMES


def assessed(profile: str) -> list[dict]:
    """Every finding × model: its verdict, its robustness (robust.assess; None before any run) and the pairs it reads
    that mix code versions or CPUs. The one pass the summary and the evidence page's robustness tables share."""
    out = []
    for model in grid.grid(profile).models:
        for df, judge, key in stopping.every_recipe(profile, model):
            v = judge(df)
            out.append({"model": model, "verdict": v, "mixed": findings.mixed_pairs(df, key), "recipe": (df, judge),
                        "robust": robust.assess(df, judge, key, model) if v["verdict"] != stats.NONE else None})
    return out


def verdicts(profile: str, rows: list[dict] | None = None) -> pd.DataFrame:
    """finding × model → verdict, the part that decides it (mean change, 95% CI, p), n, and robust or fragile."""
    table = []
    for r in rows if rows is not None else assessed(profile):
        v = r["verdict"]
        n = sorted({p.test.n for p in v["tests"].values()}) or [0]  # [0]: no part measured yet
        table.append({"finding": findings.number(v), "model": r["model"], "verdict": v["verdict"],
                      "deciding part: change [95% CI], p": findings.deciding(v),
                      "n": "–".join(map(str, (n[0], n[-1]) if n[0] != n[-1] else n[:1])),
                      "robustness": robust.word(r["robust"]) if r["robust"] else "—"})
    return pd.DataFrame(table)


def together(rows: list[dict]) -> str:
    """In words: how many verdicts survive Holm across the book's primary parts, and how many pairs mix versions."""
    decided = [r["verdict"] for r in rows if r["verdict"]["verdict"] in (stats.HOLDS, stats.FAILS)]
    survive = robust.primary_holm([r["verdict"] for r in rows])
    mixed = len(_mixed(rows))
    names = ", ".join(f"{findings.number(v)} on {r['model']} ({v['verdict']})" for r in rows for v in survive
                      if v is r["verdict"])
    return (f"**Read together.** Each finding has one primary part, named in code before its runs "
            f"(`findings.PRIMARY`: SparseGPT's LR → BR step for finding 1, WikiText-2 perplexity for the others). "
            f"With a two-sided test on each and Holm's correction across all {len(rows)} findings × models, "
            f"{len(survive)} of the {len(decided)} decided verdicts keep their direction"
            + (f": {names}." if survive else ".")
            + f" **Pairs that mix code versions or CPU models** among the runs the verdicts read: {mixed} "
            f"(the target is 0; the evidence page lists them).")


def rule_markdown(profile: str = "cpu") -> str:
    """The rule, and the rule measured on normal noise at the store's numbers of seeds (stats.simulate)."""
    seeds = sorted({len(grid.seeds(profile, m)) for m in grid.grid(profile).models} | {3, 5})
    rows = []
    for n in seeds:
        for parts, effect in ((1, 0.0), (5, 0.0), (1, 1.0), (1, 1.5), (5, 1.5)):
            r = stats.simulate(n, parts, effect)
            rows.append({"seeds": n, "parts": parts, "true effect (sd)": effect, "holds %": 100 * r[stats.HOLDS],
                         "does not hold %": 100 * r[stats.FAILS]})
    table = pd.DataFrame(rows).round(1)
    return (findings.RULE + "\n\nThe rule on simulated findings (200,000 draws a row, each part's per-seed change "
            "normal with the stated mean in units of its sd): at effect 0 *holds* is the false-positive rate, "
            "at effect > 0 the power.\n\n" + table.to_markdown(index=False) + "\n")


def intro_table(profile: str) -> pd.DataFrame:
    """The dense model and the intro rows on the whole test sets (first model, first seed)."""
    model = next(iter(grid.grid(profile).models))
    seed = grid.seeds(profile, model)[0]
    found = [("dense", findings.dense(profile, model, full=True))]
    for criterion, recon in sorted(grid.INTRO_ROWS, key=lambda row: SCHEMES.index(row[1])):
        config = grid.cell(profile, model, seed, criterion=criterion, recon=recon)
        found.append((f"{criterion} {findings.LABELS[recon]}",
                      records.run(config) if findings.computing() else records.stored(config)))
    # a record the store lacks (and may not compute) is left out, as the findings' tables leave theirs
    return pd.DataFrame([{"model": name, **{f"ppl {k}": v for k, v in r["ppl"].items()},
                          "mean acc": 100 * r["zeroshot"]["mean_acc"] if r.get("zeroshot") else None}
                         for name, r in found if r is not None])


def summary_markdown(profile: str = "cpu", rows: list[dict] | None = None) -> str:
    base = grid.base(profile)
    models = ", ".join(f"{m} ({len(s)} seed{'s' * (len(s) > 1)})" for m, s in grid.grid(profile).models.items())
    lrs = ", ".join(f"{grid.lr(profile, m):g} ({m})" for m in grid.grid(profile).models)
    missing = len(grid.missing(profile))
    pending = (f" **{missing} runs of the grid are not in the store yet** (`make records` computes them): the "
               f"verdicts read the seeds that are, and *n* says how many." if missing and not findings.computing() else "")
    head = (f"Models: {models}. {base.sparsity} sparsity, {base.n_calib} × {base.seq_len} calibration tokens "
            f"({base.calib}), {base.epochs} epochs of Adam at lr {lrs}, batch {base.batch_size} "
            f"(profile `{profile}`).{pending} *Deciding part*: the weakest part of a finding that holds, the part "
            f"against the paper of one that does not, else the part furthest from significance. *Robustness*: "
            f"robust when the verdict survives the four checks of the evidence page (an exact test, one seed less, "
            f"other evaluation windows, the kernels' spread), else fragile, with why.\n\n")
    rule = ("\n\nThe rule (the evidence page has it in full, with its error rates): a one-sided paired t-test "
            "per part at α = 0.05; *holds* when every part is significant in the paper's direction.\n")
    model = next(iter(grid.grid(profile).models))
    intro = (f"\n\nPerplexity on the whole test sets ({base.seq_len}-token windows) and mean zero-shot accuracy "
             f"(%, {grid.grid(profile).zeroshot_limit or 'all'} items a task) of {model}, seed "
             f"{grid.seeds(profile, model)[0]}:\n\n" + intro_table(profile).round(2).to_markdown(index=False))
    rows = assessed(profile) if rows is None else rows  # after the intro's records: a damaged one stops it first
    return head + verdicts(profile, rows).to_markdown(index=False) + "\n\n" + together(rows) + rule + intro + "\n"


def records_markdown() -> str:
    all_ = records.all_records()
    if not all_:
        return "No run records yet.\n"
    rows = [{"key": r["key"], "model": r["config"]["model"], "criterion": r["config"]["criterion"],
             "recon": r["config"]["recon"], "seed": r["config"]["seed"],
             "sweep": f"ep {r['config']['epochs']}, n {r['config']['n_calib']}, gen {r['config']['self_gen']}",
             "final_error": f"{r['final_error']:.4g}", "seconds": f"{r['seconds']['total']:.0f}",
             "commit": r.get("git_commit"), "source": r.get("source_digest")} for r in all_]
    # the CPU model too: kernel rounding differs between CPUs (reproducibility page), and a seed's runs can span two
    machines = Counter(f"{r['machine'].get('cpu_model') or 'CPU not recorded'} ({r['machine']['platform']}, "
                       f"{r['machine']['cpus']} CPUs, GPU: {r['machine']['gpu'] or 'none'})" for r in all_)
    machines = [f"{m}: {n} runs" for m, n in sorted(machines.items())]
    versions = sorted({", ".join(f"{k} {v}" for k, v in r["versions"].items()) for r in all_})
    # the dense models' records (their whole-test-set perplexities, zero-shot) are part of what the store cost
    dense = records.all_records(dense=True)
    hours = (sum(r["seconds"]["total"] for r in all_) + sum(sum(r["seconds"].values()) for r in dense)) / 3600
    head = (f"{len(rows)} pruning runs and {len(dense)} dense evaluations, {hours:.1f} hours of compute in all "
            f"(wall time of each record, summed). "
            f"Machines: {'; '.join(machines)}. Versions: {'; '.join(versions)}.\n\n")
    return head + pd.DataFrame(rows).to_markdown(index=False) + "\n"


SLOW = 1.5  # a run whose pruning took this many times its cell's fastest seed shared or lost the machine


def timed(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows whose timings are clean, rows left out and why). Left out: a run resumed before seconds.total
    counted the pruning done before its kill (total < prune), and a run that took over SLOW × the fastest seed
    of its model, criterion and scheme (its grid was paused, or it shared the cores with other work: the same
    work on the same machine varies by ±15% when it has the cores to itself)."""
    fastest = df.groupby(["model", "criterion", "recon"]).seconds.transform("min")
    why = pd.Series("", index=df.index)
    why[df.seconds_total < df.seconds] = "total below its pruning (resumed before the fix)"
    why[(why == "") & (df.seconds > SLOW * fastest)] = \
        ("pruning took " + (df.seconds / fastest).round(1).astype(str) + "× its cell's fastest seed")
    return df[why == ""], df[why != ""].assign(why=why[why != ""])


def cost_markdown(profile: str = "cpu") -> str:
    """The analogue of the paper's Table 6: seconds and peak memory of pruning, per model and scheme."""
    df = pd.concat([findings.error_reduction(profile, m, progress=False) for m in grid.grid(profile).models])
    clean, out_ = timed(df)
    models = list(grid.grid(profile).models)
    clean = clean.sort_values(["model", "recon"], key=lambda c: c.map((models if c.name == "model" else SCHEMES).index))
    clean = clean.assign(minutes=clean.seconds / 60, recon=clean.recon.map(findings.LABELS))
    out = findings.spread(clean, ["model", "recon"], ["minutes", "peak_memory_mb"]).reset_index()
    left = out_.assign(run=out_.model + " " + out_.criterion + " " + out_.recon.map(findings.LABELS) + " seed "
                       + out_.seed.astype(str), minutes=(out_.seconds / 60).round(1))[["run", "minutes", "why"]]
    paper = "LLaMA-7B, SparseGPT, batch 8, peak GPU memory (paper Table 6): " + ", ".join(
        f"{findings.LABELS[r]} {paper_.lookup('llama-7b', 'sparsegpt', r, 'peak_memory_gb'):g} GB" for r in SCHEMES) + "."
    return (f"Minutes of pruning (the reconstruction, not the evaluation) and the process's peak resident memory "
            f"(MB), mean ± sd over criteria and seeds, on the machine that wrote the records. The grid ran two runs "
            f"side by side, one thread each: read the minutes as uncertain by tens of percent (the README's speed "
            f"table has controlled timings). {paper}\n\n" + out.to_markdown(index=False) + "\n\n"
            f"Left out of the means ({len(left)} runs; rule: `reconlib.report.timed`):\n\n"
            + (left.to_markdown(index=False) if len(left) else "none") + "\n")


def verify_markdown(rows: list[dict]) -> str:
    """One row per recomputed record: both machines, stored and recomputed final error, the largest relative
    difference, the band it was judged against, and the case and verdict."""
    def cpu(m: dict) -> str:
        return f"{m['cpu_model']}, {m['cpu_capability']}" if "cpu_capability" in m else "not recorded"

    here = provenance.machine()
    table = pd.DataFrame([{
        "record": r["record"][:8], "run": f"{r['config']['model']} {r['config']['criterion']} "
        f"{findings.LABELS[r['config']['recon']]} s{r['config']['seed']}",
        "stored on": cpu(r["stored_machine"]), "case": r["case"],
        "final error (stored / now)": f"{r['stored_final_error']:.6g} / {r['final_error']:.6g}",
        "largest rel. diff.": f"{r['worst']:.2g}", "band there": f"{r['band']:.2g}",
        "verdict": "fails" if r["failures"] or r["flipped"] else "agrees"} for r in rows])
    flips = [r for r in rows if r["flipped"] is not None]
    switched = "".join(f", {k}={v}" for k, v in here["isa_variables"].items())
    return (f"Recomputed on {cpu(here)}{switched} ({here['blas'].split(' Version')[0]}, torch "
            f"{provenance.environment()['versions']['torch']}, each record at the thread count that wrote it) while the book "
            f"was built: "
            f"{len(rows)} record(s), and every record's digest checked. *same kernels*: the record names this CPU, "
            f"ISA, BLAS and versions, so every number must agree to a relative {verify.SAME_KERNELS:g}. *same numbers*: "
            f"the record names other kernels or none, and every number agrees to that tolerance all the same. *other kernels*: each "
            f"field's band is {verify.SPREAD:g} × the largest relative difference that recomputing under "
            f"{', '.join(map(str, verify.variants()))} makes in it here, at least {verify.FLOOR:g}. "
            + (f"{len(flips)} of them were checked against the findings' verdicts, and no verdict or part changed with the "
               "recomputed record." if flips else "None was checked against the findings' verdicts: that needs the "
               "record's model to have every run of the grid in the store.") + "\n\n" + table.to_markdown(index=False) + "\n")


def audit_markdown(rows: list[dict]) -> str:
    """`records audit`: one record of each code version in the store, recomputed with today's code."""
    table = pd.DataFrame([{
        "source_digest": r["source_digest"], "record": r["record"][:8],
        "run": f"{r['config']['model']} {r['config']['criterion']} {findings.LABELS[r['config']['recon']]} "
               f"s{r['config']['seed']}", "case": r["case"],
        "largest rel. diff.": f"{r['worst']:.2g}", "band there": f"{r['band']:.2g}",
        "worst number": r["worst_number"], "verdict": "fails" if r["failures"] or r["flipped"] else "agrees"}
        for r in rows])
    here, env = provenance.machine(), provenance.environment()
    return ("# Code versions, audited\n\nThe store's records were written by several versions of reconlib's source "
            "(`source_digest`, a hash of the library's files). So that a verdict never compares two runs that "
            "differ by code rather than by the step it reads, `python -m reconlib records audit` (`make audit`) "
            f"recomputed the cheapest record of each version with the code of commit {env['git_commit']} "
            f"(source_digest {env['source_digest']}) on "
            f"{here['cpu_model']} ({here['cpu_capability']}), judged by the rule of {{doc}}`reproducibility`. "
            "*same numbers* and *same kernels* mean that code gives the stored numbers (to a relative 1e-9); "
            "*other kernels* that they differ and how far. Generated, and committed because it takes an hour or "
            f"more; written {time.strftime('%Y-%m-%d')}.\n\n" + table.to_markdown(index=False) + "\n")


def robust_markdown(profile: str = "cpu", rows: list[dict] | None = None) -> str:
    """The evidence page's robustness tables: each verdict's four checks, the share of each part's variance that
    comes from which windows were evaluated, the evaluation's cost per run, and the pairs that mix versions."""
    rows = assessed(profile) if rows is None else rows
    checks, shares, deciding_sizes = [], [], []
    for r in rows:
        a, v = r["robust"], r["verdict"]
        if a is None:
            continue
        e, (delta, arm) = a["exact"], a["shift"]
        deciding = findings.deciding(v).split(":", 1)[0]
        checks.append({"finding": findings.number(v), "model": r["model"], "verdict": v["verdict"],
                       "exact p (deciding)": findings.fmt_p(e["p"].get(deciding, float("nan"))),
                       "n / needed": f"{e['n']} / {e['needed']}",
                       "without one seed": "changes: " + ", ".join(map(str, a["loo"])) if a["loo"] else "same",
                       "window draws kept": f"{100 * a['windows']['keep']:.0f}%" if a["windows"]["metrics"] else "no windows",
                       "shift that flips": f"{100 * delta:.2g}% ({arm})" if arm is not None else "> 100%",
                       "kernel band": _deciding_band(r["model"], deciding),
                       "robust": "yes" if a["robust"] else "no"})
        sized = robust.sizing(*r["recipe"], population(r["model"]))
        if deciding in sized:
            deciding_sizes.append(dict(sized[deciding], model=r["model"]))
        for part, share in a["windows"]["share"].items():
            z = sized.get(part)
            shares.append({"finding": findings.number(v), "model": r["model"], "part": part,
                           "deciding": "yes" if part == deciding else "", "n": z["n"] if z else "",
                           "share %": round(100 * share, 1),
                           "windows now": z["windows"] if z else "",
                           f"for {100 * robust.SHARE:.0f}%": _needed(z) if z else "",
                           "whole set": z["population"] or "" if z else ""})
    mixed = _mixed(rows)
    cost = evaluation_cost(profile, deciding_sizes)
    return ("Each verdict's four checks (reconlib/robust.py). *exact p*: the sign-flip test of the deciding part, "
            "over all 2ⁿ sign assignments; *needed*: the fewest seeds at which that test can say the verdict at all. "
            "*Without one seed*: the seeds whose removal changes it. *Window draws kept*: the share of "
            f"{robust.DRAWS} bootstraps of the evaluation windows (the same draw for every run) that keep it; robust "
            f"needs {100 * robust.KEEP:.0f}%. *Shift that flips*: the smallest relative change of one arm's metrics, "
            "all seeds at once, that changes the verdict. *Kernel band*: the relative spread kernel code paths make in "
            "the deciding part's metric, in a cross-block run recomputed by the code that wrote it at its writer's "
            "thread count, so that the kernels are the one difference (`records band`); robust needs the verdict to "
            "survive one arm's metrics, every one it reads moved by its own band, in the worse direction.\n\n"
            + (pd.DataFrame(checks).to_markdown(index=False) if checks else "No verdict has runs yet.")
            + "\n\n**How much of a change comes from which windows were evaluated.** For each part with evaluation "
            "windows, at its n seeds: *share*, the variance of its mean change over the window bootstraps, as a share "
            "of that plus the variance over seeds divided by n (the target is at most "
            f"{100 * robust.SHARE:.0f}% on every deciding part). *for {100 * robust.SHARE:.0f}%*: the fewest windows "
            "that would bring the share there at the same n, from a two-way split of the per-(seed, window) changes "
            "into a seed effect, a window effect and their interaction (robust.share_at). More windows shrink the "
            "last two but not the first, so where the seeds agree it takes most of the *whole set*, the test set's "
            "windows at that length, which leave no choice of windows at all.\n\n"
            + (pd.DataFrame(shares).to_markdown(index=False) if shares
               else "No part has evaluation windows yet.")
            + "\n\n" + cost + "\n\n**Pairs that mix code versions or CPU models**"
            + (":\n\n" + mixed.to_markdown(index=False) if len(mixed) else ": none.") + "\n")


def _deciding_band(model: str, part: str) -> str:
    """The kernel band of the metric a verdict's deciding part reads (the column beside "shift that flips")."""
    bands = robust.band(model)
    if bands is None:
        return "not measured"
    return f"{100 * max(bands[m] for m in robust._read({'tests': {part: None}}, bands)):.2g}%"


def _needed(z: dict) -> str:
    if z["needed"] is None:
        return "none short of all"
    return "all" if z["population"] and z["needed"] >= z["population"] else str(z["needed"])


_tokenizer = functools.cache(models.load_tokenizer)


def population(model: str):
    """(metric, tokens a window) → how many such windows the metric's whole test set holds: the N that
    robust.windows_needed sizes against."""
    def count(metric: str, length: int) -> int:
        tokenizer, bos = _tokenizer(model)  # as the model's runs cut their windows
        return data.window_count(metric.removeprefix("ppl_").removeprefix("test_error_"), tokenizer, length, bos)
    return count


def _mixed(rows: list[dict]) -> pd.DataFrame:
    """Each group of runs that mixes code versions or CPUs once, with the findings that read it (4 and 4a read
    the same runs)."""
    frames = [r["mixed"].assign(finding=findings.number(r["verdict"])) for r in rows if len(r["mixed"])]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames).fillna("")
    by = [c for c in df.columns if c != "finding"]
    out = df.groupby(by, sort=False).finding.agg(", ".join).reset_index()
    return out[["finding"] + by]


def unloaded(done: list[dict]) -> tuple[float, list[float], list[float]]:
    """Runs' records → (seconds a perplexity window, each run's perplexity seconds, each run's total seconds) as on
    cores of their own (grid.own_seconds), the rate the fastest run's."""
    own = grid.own_seconds(done)
    times = [grid.ppl_time(r, s) for r, s in zip(done, own)]
    return min(t / n for t, n in times), [t for t, _ in times], [s["total"] for s in own]


def evaluation_cost(profile: str, deciding: list[dict] | None = None) -> str:
    """What the verdict runs' evaluation costs a run, per model, from their records; with the deciding parts'
    robust.sizing (each with its model), also what the windows they need would cost, run and grid."""
    g = grid.grid(profile)
    if not g.evaluation:
        return ""
    rows = []
    for model in g.models:
        cells = grid.overfitting_cells(profile, model) + sum(grid.self_gen_cells(profile, model).values(), [])
        done = [r for r in findings.read(cells, progress=False) if any(r.get("ppl_windows", {}).values())]
        if not done:
            continue
        rate, seconds, totals = unloaded(done)
        row = {"model": model, "runs": len(done), "perplexity s a run": round(sum(seconds) / len(seconds)),
               "s a window": round(rate, 2), "of the run %": round(100 * sum(seconds) / sum(totals), 1)}
        # the most windows a deciding perplexity part asks for, on each test set (all: the whole set)
        need = {}
        for z in deciding or []:
            if z["model"] == model and z["metric"].startswith("ppl_") and z["population"] \
                    and z["length"] == g.evaluation["eval_len"]:  # not finding 4's, read at the earlier 32 × 128
                n = z["population"] if z["needed"] is None else min(z["needed"], z["population"])
                need[z["metric"]] = max(need.get(z["metric"], 0), n)
        if need:
            now = g.evaluation["max_eval_windows"] * len(done[0]["ppl_windows"])
            more = sum(need.values()) + g.evaluation["max_eval_windows"] * (len(done[0]["ppl_windows"]) - len(need))
            run = sum(totals) / len(totals) + (more - now) * rate
            row |= {"windows: now → needed": f"{now} → {more}", "CPU-h, all runs at that": round(len(cells) * run / 3600, 1)}
        rows.append(row)
    e = g.evaluation
    return (f"**The evaluation's cost.** Perplexity at a {e['eval_len']}-token context on {e['max_eval_windows']} "
            f"windows spread over each test set, one thread, in findings 2 and 3's runs so far, as on cores of their "
            "own: each run's times are divided by how much slower than the fastest run its evaluation went, since "
            "other jobs on its cores only slow a run. *needed*: the windows "
            f"over both test sets that would bring every deciding perplexity part to {100 * robust.SHARE:.0f}% (the "
            "most any part asks for on each set); *CPU-h*: what all of the grid's runs of findings 2 and 3 would "
            "cost with them:\n\n"
            + (pd.DataFrame(rows).fillna("").to_markdown(index=False) if rows else "no verdict run yet."))
