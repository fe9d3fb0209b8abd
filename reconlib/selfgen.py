"""Self-generated calibration text: the dense model writes its own calibration data (method.md §5).

The paper's recipe, per text: draw a first token uniformly from the vocabulary (special tokens
excluded), extend it greedily by 4 tokens, draw again if the decoded prefix is not English (py3langid),
then sample the rest (temperature 1, top-k 50) up to `text_len` tokens or EOS. One random window of the
calibration length is cut from each text.

Choices the paper leaves open:
- A text ends at the first special token (EOS, end-of-turn, pad, chat markers): none of them is text.
  The stop token is not kept.
- A text that ends before it can fill one window is dropped and another is drawn, so every text gives
  a full window and no window is padded. Hence the cache key includes the window length.
- Models that need BOS (Gemma) get BOS before the first token, and every window starts with BOS.
- One local `torch.Generator` drives every draw, so the global RNG is untouched; the same seed and
  batch size give the same texts on the same machine.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import atomic
from .models import cache_dir, needs_bos

PREFIX = 5  # the random first token and its 4 greedy successors
TOP_K = 50


def english(text: str) -> bool:
    """True when py3langid classifies `text` as English: the paper's prefix filter (method.md §5)."""
    import py3langid

    return py3langid.classify(text)[0] == "en"


def special_ids(tokenizer) -> list[int]:
    """Ids that are not text: the tokenizer's special tokens and added control tokens (Gemma's <unused*>)."""
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return sorted(ids)


@torch.inference_mode()
def _extend(model, ids, steps, n_vocab, generator=None, stop=None):
    """Extend ids (B, P) by up to `steps` tokens with a KV cache → new tokens (B, ≤ steps).

    Greedy when `generator` is None, else top-k sampling at temperature 1. Stops early once every row
    holds a `stop` token; later tokens of a stopped row are junk that the caller cuts off.
    """
    # transformers 5.x renamed the forward's `past_key_values` to `cache`; accept both
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache, x, new = None, ids, []
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    for _ in range(steps):
        out = model(input_ids=x, use_cache=True, **{cache_arg: cache})
        cache = getattr(out, cache_arg)
        logits = out.logits[:, -1, :n_vocab].float()  # (B, V): padded embedding rows are not tokens
        if generator is None:
            x = logits.argmax(-1, keepdim=True)  # (B, 1)
        else:
            top = logits.topk(TOP_K, dim=-1)
            pick = torch.multinomial(top.values.softmax(-1), 1, generator=generator)  # (B, 1)
            x = top.indices.gather(-1, pick)
        new.append(x)
        if stop is not None:
            done |= torch.isin(x[:, 0], stop)
            if done.all():
                break
    return torch.cat(new, dim=1) if new else ids[:, :0]


def generate_texts(model, tokenizer, n, text_len=2048, seed=0, batch_size=16, progress=True,
                   min_len=0, is_english=None) -> list[list[int]]:
    """`n` self-generated texts as token id lists, without BOS or the stop token (method.md §5).

    Texts shorter than `min_len` tokens are dropped and redrawn. `is_english(str) -> bool` filters the
    5-token prefixes (default: `english`, looked up at call time); tests inject their own so as not to depend
    on langid's verdict on random tokens.
    """
    is_english = is_english or english
    if n < 0:
        raise ValueError(f"n must be a number of texts >= 0, got {n}")
    if text_len < PREFIX:
        raise ValueError(f"text_len must be at least the {PREFIX}-token prefix, got {text_len}")
    if min_len > text_len:
        raise ValueError(f"min_len ({min_len}) cannot exceed text_len ({text_len})")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    n_vocab = len(tokenizer)
    stop = torch.tensor(special_ids(tokenizer), device=device)
    allowed = torch.ones(n_vocab, dtype=torch.bool, device=device)
    allowed[stop] = False
    candidates = allowed.nonzero().squeeze(1)  # (V',)
    bos = []
    if needs_bos(model):
        if tokenizer.bos_token_id is None:
            raise ValueError(f"{model.config.model_type} needs BOS but the tokenizer defines none")
        bos = [tokenizer.bos_token_id]
    stop_set = set(stop.tolist())

    texts, prefixes, drawn = [], [], 0
    bar = tqdm(total=n, desc="self-generating", unit="text", disable=not progress)
    while len(texts) < n:
        rows = min(batch_size, n - len(texts))
        while len(prefixes) < rows:  # greedy prefixes, batched; rejected ones are simply dropped
            if drawn > 1000 * n + 10_000:  # a guard against an endless loop, not a tuning knob
                raise RuntimeError(f"only {len(texts)} of {n} texts after {drawn} first-token draws: does the "
                                   "model write English, and do its texts reach min_len before EOS?")
            first = candidates[torch.randint(len(candidates), (batch_size, 1), generator=generator, device=device)]
            ids = torch.tensor([bos + t for t in first.tolist()], device=device)  # (B, len(bos) + 1)
            greedy = _extend(model, ids, PREFIX - 1, n_vocab)  # (B, 4)
            for p in torch.cat([first, greedy], dim=1).tolist():
                if not stop_set & set(p) and is_english(tokenizer.decode(p)):
                    prefixes.append(p)
            drawn += batch_size
        batch, prefixes = prefixes[:rows], prefixes[rows:]
        ids = torch.tensor([bos + p for p in batch], device=device)  # (rows, len(bos) + 5)
        sampled = _extend(model, ids, text_len - PREFIX, n_vocab, generator, stop)
        for p, tail in zip(batch, sampled.tolist()):
            text = p + tail
            end = next((i for i, t in enumerate(text) if t in stop_set), len(text))
            if end >= min_len:
                texts.append(text[:end])
                bar.update()
    bar.close()
    return texts


def _model_name(model, model_name):
    return model_name or getattr(model, "name_or_path", "") or \
        "config-" + hashlib.sha1(model.config.to_json_string().encode()).hexdigest()[:10]


def _path(model_name, n, seq_len, seed, text_len, suffix) -> Path:
    name = re.sub(r"[^\w.-]+", "_", str(model_name)).strip("_")  # a Hub id or folder path becomes one name
    return cache_dir() / "selfgen" / f"{name}-n{n}-seq{seq_len}-text{text_len}-seed{seed}{suffix}"


def self_generated(model, tokenizer, n, seq_len, seed=0, text_len=2048, cache=True, model_name=None,
                   is_english=None) -> torch.LongTensor:
    """`n` calibration windows (n, seq_len) cut from self-generated texts, one per text (method.md §5).

    With BOS (`needs_bos`) each window is BOS + seq_len - 1 text tokens. Texts are cached under
    `cache_dir()/selfgen/`, keyed by (model name, n, seq_len, text_len, seed); the window starts are
    drawn from `seed`, so a cached call returns the same tensor. Decoded texts: `load_texts`.
    """
    if n < 0:
        raise ValueError(f"n must be a number of self-generated windows >= 0, got {n}")
    if not 1 <= seq_len <= text_len:
        raise ValueError(f"seq_len ({seq_len}) must be between 1 and text_len ({text_len}): "
                         "a window is cut from one generated text")
    if n == 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    bos = [tokenizer.bos_token_id] if needs_bos(model) else []
    length = seq_len - len(bos)  # text tokens per window
    key = (_model_name(model, model_name), n, seq_len, seed, text_len)
    tokens_file = _path(*key, ".pt")
    if cache and tokens_file.exists():
        saved = torch.load(tokens_file, weights_only=True)
        texts = saved["tokens"].split(saved["lengths"].tolist())
    else:
        texts = generate_texts(model, tokenizer, n, text_len, seed, min_len=length, is_english=is_english)
        texts = [torch.tensor(t, dtype=torch.long) for t in texts]
        if cache:  # texts first: the .pt file's presence means both are complete
            record = {"model": key[0], "n": n, "seq_len": seq_len, "text_len": text_len, "seed": seed,
                      "texts": tokenizer.batch_decode([t.tolist() for t in texts])}
            atomic.write(_path(*key, ".json"), lambda f: Path(f).write_text(json.dumps(record)))
            saved = {"tokens": torch.cat(texts), "lengths": torch.tensor([len(t) for t in texts])}
            atomic.write(tokens_file, lambda f: torch.save(saved, f))
    generator = torch.Generator().manual_seed(seed)
    windows = []
    for text in texts:
        start = int(torch.randint(len(text) - length + 1, (1,), generator=generator))
        windows.append(bos + text[start:start + length].tolist())
    return torch.tensor(windows, dtype=torch.long)  # (n, seq_len)


def load_texts(model_name, n, seq_len, seed=0, text_len=2048) -> list[str]:
    """The decoded texts behind `self_generated(model, tokenizer, n, seq_len, seed, text_len)`, to show.

    When the cache lacks them (a run record read back under another cache folder, or after clearing it), they
    are generated again from the model name: the same seed gives the same texts.
    """
    path = _path(model_name, n, seq_len, seed, text_len, ".json")
    if not path.exists():
        from .models import load_model

        model, tokenizer = load_model(model_name)
        self_generated(model, tokenizer, n, seq_len, seed, text_len, model_name=model_name)
    return json.loads(path.read_text())["texts"]
