"""The paper's numbers (method.md §7) as data, for side-by-side tables. Never typed into a notebook."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

# The weights in one block's linears (those pruned and reconstructed), from the models' published shapes:
# LLaMA-7B hidden 4096, MLP 11008 (q, k, v, o, gate, up, down); OPT-125M hidden 768, MLP 3072 (q, k, v, out,
# fc1, fc2). And the paper's calibration set, 256 × 1024 tokens.
BLOCK_WEIGHTS = {"llama-7b": 4 * 4096**2 + 3 * 4096 * 11008, "opt-125m": 4 * 768**2 + 2 * 768 * 3072}
CALIB_TOKENS = 256 * 1024


@lru_cache(maxsize=1)
def numbers() -> pd.DataFrame:
    """model, criterion, recon, self_gen, metric, value, source: one row per table cell."""
    df = pd.read_csv(Path(__file__).with_name("paper_numbers.csv"), dtype={"recon": str}, keep_default_na=False)
    return df.assign(value=df.value.astype(float))


@lru_cache(maxsize=1)
def _cells() -> dict:
    """(model, criterion, recon, metric, self_gen) → value: the first row of each, as the table lists them."""
    df = numbers()
    keys = zip(df.model, df.criterion, df.recon, df.metric, df.self_gen.astype(int))
    return {k: v for k, v in reversed(list(zip(keys, df.value.astype(float))))}


def lookup(model: str, criterion: str, recon: str, metric: str, self_gen: int = 0) -> float | None:
    # a dict, not a DataFrame filter: the robustness checks ask it some 10^4 times a page
    return _cells().get((model, criterion, recon, metric, self_gen))

