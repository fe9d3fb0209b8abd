"""Peak memory of perplexity evaluation: chunked NLL (reconlib.evaluate) as a ratio to the full-logits baseline.

baseline = the old method, kept here only: the whole (B, T, V) logits of the model's forward, then one
cross-entropy, with batches of about 2^28 logits. "err" is each one's relative distance from a cross-entropy
in fp64: fp32 log-softmax over Gemma's 262k logits is off by ~2e-5; the new in-place NLL is not.
Each measurement runs in its own process so that its peak RSS is its own; the peak is counted from
after the model (all its weights read) and the windows are loaded.

    python bench/eval_memory.py [--models smollm2-135m gemma3-270m] [--seq-lens 512 2048] [--windows 4]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


@torch.inference_mode()
def full_logits_perplexity(model, windows: torch.Tensor) -> float:
    batch_size = max(1, int(2**28 // (windows.shape[1] * model.config.vocab_size)))
    nll, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start:start + batch_size]
        logits = model(input_ids=ids, use_cache=False).logits.float()  # (B, T, V)
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
    return math.exp(nll / count)


@torch.inference_mode()
def fp64_perplexity(model, windows: torch.Tensor) -> float:
    """The reference both are judged by: the model's own logits, cross-entropy in fp64, 64 positions at a time."""
    nll = 0.0
    for ids in windows[:, None]:
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
        for i in range(0, len(logits), 64):
            nll += F.cross_entropy(logits[i:i + 64].double(), ids[0, 1 + i:65 + i], reduction="sum").item()
    return math.exp(nll / windows[:, 1:].numel())


def rss_mb(field: str) -> float:
    status = open("/proc/self/status").read()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")) / 1024


def measure(name: str, seq_len: int, method: str, n_windows: int) -> dict:
    from reconlib import data, evaluate, memory, models

    model, tokenizer = models.load_model(name)
    bos = tokenizer.bos_token_id if models.needs_bos(model) else None
    windows = data.eval_windows("wikitext2", tokenizer, seq_len, bos, n_windows)
    for p in model.parameters():  # page in weights still lazily mapped from the safetensors file
        p.sum()
    cpu = torch.device("cpu")
    memory.reset_peak(cpu)
    before = rss_mb("VmRSS")
    start = time.perf_counter()
    if method == "old":
        ppl = full_logits_perplexity(model, windows)
    else:
        ppl = evaluate.perplexity(model, windows, progress=False)
    out = {"ppl": ppl, "seconds": time.perf_counter() - start, "peak_mb": memory.peak_mb(cpu) - before}
    if method == "old":  # after the peak is read
        out["fp64_ppl"] = fp64_perplexity(model, windows)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # model seq_len method
    args = parser.parse_args()
    if args.one:
        name, seq_len, method = args.one
        print(json.dumps(measure(name, int(seq_len), method, args.windows)))
        return
    from reconlib import models

    for name in args.models:  # convert any GGUF now, so that no measurement pays for it
        models.resolve(name)
    rows = []
    for name in args.models:
        for seq_len in args.seq_lens:
            r = {}
            for method in ("old", "new"):
                cmd = [sys.executable, __file__, "--one", name, str(seq_len), method, "--windows", str(args.windows)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                r[method] = json.loads(out.strip().splitlines()[-1])
            rows.append((name, seq_len, r["old"], r["new"]))
    print(f"{args.windows} WikiText-2 test windows; peak = RSS high-water mark above RSS after loading, per process")
    print(f"{'model':<14} {'T':>5} {'old peak MB':>12} {'new peak MB':>12} {'new/old':>8} {'old ppl':>10} "
          f"{'new ppl':>10} {'rel diff':>9} {'old err':>8} {'new err':>8} {'old s':>6} {'new s':>6}")
    for name, seq_len, old, new in rows:
        err = lambda ppl: abs(ppl - old["fp64_ppl"]) / old["fp64_ppl"]  # noqa: E731
        print(f"{name:<14} {seq_len:>5} {old['peak_mb']:12.0f} {new['peak_mb']:12.0f} "
              f"{new['peak_mb'] / old['peak_mb']:8.3f} {old['ppl']:10.4f} {new['ppl']:10.4f} "
              f"{abs(new['ppl'] - old['ppl']) / old['ppl']:9.1e} {err(old['ppl']):8.1e} {err(new['ppl']):8.1e} "
              f"{old['seconds']:6.1f} {new['seconds']:6.1f}")


if __name__ == "__main__":
    main()
