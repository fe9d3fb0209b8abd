"""Markdown tables for the book, generated from the run records (never typed in)."""
from __future__ import annotations

import pandas as pd

from . import findings, records
from .config import profile

SELF_GEN = {"smoke": 2, "cpu": 16, "paper": 512}  # self-generated windows compared with none, per profile


def verdict_table(profile_name: str) -> pd.DataFrame:
    base = profile(profile_name)
    return findings.verdicts(base, SELF_GEN[profile_name])


def summary_markdown(profile_name: str = "cpu") -> str:
    base = profile(profile_name)
    head = (f"Model **{base.model}**, {base.sparsity} sparsity, {base.n_calib} × {base.seq_len} calibration tokens "
            f"({base.calib}), {base.epochs} epochs of Adam at lr {base.lr:g}, batch {base.batch_size} "
            f"(profile `{profile_name}`).\n\n")
    return head + verdict_table(profile_name).to_markdown(index=False) + "\n"


def records_markdown() -> str:
    rows = []
    for r in records.all_records():
        c = r["config"]
        rows.append({"key": r["key"], "model": c["model"], "criterion": c["criterion"], "sparsity": c["sparsity"],
                     "recon": c["recon"], "n_calib×seq_len": f"{c['n_calib']}×{c['seq_len']}",
                     "epochs": c["epochs"], "self_gen": c["self_gen"], "final_error": f"{r['final_error']:.4g}",
                     "seconds": f"{r['seconds']['total']:.0f}", "peak MB": f"{r['peak_memory_mb']:.0f}",
                     "commit": r.get("git_commit"), "finished": r["finished"]})
    if not rows:
        return "No run records yet.\n"
    env = records.all_records()[-1]
    machine = env["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    head = (f"{len(rows)} runs. Machine: {machine['platform']}, {machine['cpus']} CPUs, "
            f"GPU: {machine['gpu'] or 'none'}. Versions: {versions}.\n\n")
    return head + pd.DataFrame(rows).to_markdown(index=False) + "\n"
