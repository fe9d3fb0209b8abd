"""Markdown tables for the book, generated from the run records (never typed in)."""
from __future__ import annotations

import platform

import pandas as pd

from . import findings, grid, records
from .config import SCHEMES


def verdicts(profile: str) -> pd.DataFrame:
    """finding × model → verdict, from the records of the three findings' runs."""
    rows = []
    for model in grid.grid(profile).models:
        f1 = findings.verdict_error_reduction(findings.error_reduction(profile, model))
        f2 = findings.verdict_overfitting(findings.overfitting(profile, model))
        f3 = findings.verdict_self_generated(findings.sweep(profile, model, "self_gen"))
        n = len(grid.seeds(profile, model))
        rows += [{"finding": f["finding"], "model": model, "seeds": n, "verdict": f["verdict"]} for f in (f1, f2, f3)]
    return pd.DataFrame(rows).sort_values(["finding", "model"], kind="stable")


def intro_table(profile: str) -> pd.DataFrame:
    """The dense model and the intro rows on the whole test sets (first model, first seed)."""
    model = next(iter(grid.grid(profile).models))
    dense = findings.dense(profile, model, full=True)
    rows = [{"model": "dense", **{f"ppl {k}": v for k, v in dense["ppl"].items()},
             "mean acc": 100 * dense["zeroshot"]["mean_acc"] if dense.get("zeroshot") else None}]
    for criterion, recon in sorted(grid.INTRO_ROWS, key=lambda row: SCHEMES.index(row[1])):
        r = records.run(grid.cell(profile, model, grid.seeds(profile, model)[0], criterion=criterion, recon=recon))
        rows.append({"model": f"{criterion} {findings.LABELS[recon]}", **{f"ppl {k}": v for k, v in r["ppl"].items()},
                     "mean acc": 100 * r["zeroshot"]["mean_acc"] if r.get("zeroshot") else None})
    return pd.DataFrame(rows)


def summary_markdown(profile: str = "cpu") -> str:
    base = grid.base(profile)
    models = ", ".join(f"{m} ({len(s)} seed{'s' * (len(s) > 1)})" for m, s in grid.grid(profile).models.items())
    lrs = ", ".join(f"{grid.lr(profile, m):g} ({m})" for m in grid.grid(profile).models)
    head = (f"Models: {models}. {base.sparsity} sparsity, {base.n_calib} × {base.seq_len} calibration tokens "
            f"({base.calib}), {base.epochs} epochs of Adam at lr {lrs}, batch {base.batch_size} "
            f"(profile `{profile}`).\n\n")
    rule = f"\n\nThe rule: {findings.RULE}\n"
    model = next(iter(grid.grid(profile).models))
    intro = (f"\n\nPerplexity on the whole test sets ({base.seq_len}-token windows) and mean zero-shot accuracy "
             f"(%, {grid.grid(profile).zeroshot_limit or 'all'} items a task) of {model}, seed "
             f"{grid.seeds(profile, model)[0]}:\n\n" + intro_table(profile).round(2).to_markdown(index=False))
    return head + verdicts(profile).to_markdown(index=False) + rule + intro + "\n"


def records_markdown() -> str:
    all_ = records.all_records()
    if not all_:
        return "No run records yet.\n"
    rows = [{"key": r["key"], "model": r["config"]["model"], "criterion": r["config"]["criterion"],
             "recon": r["config"]["recon"], "seed": r["config"]["seed"],
             "sweep": f"ep {r['config']['epochs']}, n {r['config']['n_calib']}, gen {r['config']['self_gen']}",
             "final_error": f"{r['final_error']:.4g}", "seconds": f"{r['seconds']['total']:.0f}",
             "commit": r.get("git_commit"), "source": r.get("source_digest")} for r in all_]
    machines = sorted({f"{r['machine']['platform']}, {r['machine']['cpus']} CPUs, GPU: {r['machine']['gpu'] or 'none'}"
                       for r in all_})
    versions = sorted({", ".join(f"{k} {v}" for k, v in r["versions"].items()) for r in all_})
    # the dense models' records (their whole-test-set perplexities, zero-shot) are part of what the store cost
    dense = records.all_records(dense=True)
    hours = (sum(r["seconds"]["total"] for r in all_) + sum(sum(r["seconds"].values()) for r in dense)) / 3600
    head = (f"{len(rows)} pruning runs and {len(dense)} dense evaluations, {hours:.1f} hours of compute in all "
            f"(wall time of each record, summed). "
            f"Machines: {'; '.join(machines)}. Versions: {'; '.join(versions)}.\n\n")
    return head + pd.DataFrame(rows).to_markdown(index=False) + "\n"


def cost_markdown(profile: str = "cpu") -> str:
    """The analogue of the paper's Table 6: seconds and peak memory of pruning, per model and scheme."""
    df = pd.concat([findings.error_reduction(profile, m, progress=False) for m in grid.grid(profile).models])
    df["minutes"] = df.seconds / 60
    out = findings.spread(df.assign(recon=df.recon.map(findings.LABELS)), ["model", "recon"],
                          ["minutes", "peak_memory_mb"]).reset_index()
    paper = "LLaMA-7B, SparseGPT, batch 8, peak GPU memory (paper Table 6): LR 3.9 GB, BR 5.7, BR+GP 5.7, BR+GP+CR 10.6."
    return (f"Minutes of pruning (the reconstruction, not the evaluation) and the process's peak resident memory "
            f"(MB), mean ± sd over criteria and seeds, on the machine that wrote the records. The grid ran two runs "
            f"side by side, one thread each, on a machine also used for other work: read the minutes as upper "
            f"bounds, uncertain by tens of percent (the README's speed table has controlled timings). {paper}\n\n"
            + out.to_markdown(index=False) + "\n")


def verify_markdown(rows: list[dict], tolerance: float) -> str:
    here = f"{platform.platform()}, {records.environment()['machine']['cpus']} CPUs"
    table = pd.DataFrame([{"record": r["record"], "run": f"{r['config']['model']} {r['config']['criterion']} "
                           f"{r['config']['recon']} seed {r['config']['seed']}", "numbers compared": r["numbers"],
                           "max relative difference": f"{r['max_relative_difference']:.2g}",
                           "seconds (stored / now)": f"{r['stored_seconds']:.0f} / {r['seconds']:.0f}"} for r in rows])
    return (f"Recomputed on this machine ({here}) while the book was built: {len(rows)} records, every number they "
            f"hold (per-block errors, test errors, perplexities, sparsity) agrees with the stored one to a relative "
            f"{tolerance:g} (the tolerance), and every record's digest matches its content.\n\n"
            + table.to_markdown(index=False) + "\n")
