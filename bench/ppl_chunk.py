"""Seconds a perplexity window by how many positions go through the output head at a time (reconlib.evaluate's
`chunk`), as a ratio to the default measured in the same process, with the NLLs' largest difference from it.

Each chunk reads the whole head (Gemma 3's 262k words × 640: 671 MB of fp32), so a chunk of few positions spends
its time streaming weights; a larger one holds chunk × vocabulary fp32 logits. Time it alone (one thread).

    OMP_NUM_THREADS=1 python bench/ppl_chunk.py [--models smollm2-135m gemma3-270m] [--windows 2] [--seq-len 512]
"""
from __future__ import annotations

import argparse
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--logits-mb", type=int, nargs="+", default=[64, 128, 256, 512])
    args = parser.parse_args()
    from reconlib import data, evaluate, models

    for name in args.models:
        model, tokenizer = models.load_model(name)
        bos = tokenizer.bos_token_id if models.needs_bos(model) else None
        ids = data.eval_windows("wikitext2", tokenizer, args.seq_len, bos, args.windows)
        evaluate.window_nll(model, ids[:1, :64], progress=False)  # warm-up: weights paged in
        default = evaluate.head_chunk(model.config)
        print(f"{name}: {args.windows} × {args.seq_len} tokens, vocabulary {model.config.vocab_size}, "
              f"default chunk {default} positions")
        print(f"{'logits MB':>9} {'chunk':>6} {'s/window':>9} {'ratio':>6} {'max |ΔNLL|':>11}")
        base = None
        chunks = [default] + [evaluate.head_chunk(model.config, mb * 2**18) for mb in args.logits_mb]
        for chunk in dict.fromkeys(chunks):  # the default first: the ratios' baseline
            mb = chunk * model.config.vocab_size * 4 / 2**20
            start = time.perf_counter()
            nll = evaluate.window_nll(model, ids, args.windows, progress=False, chunk=chunk)
            seconds = (time.perf_counter() - start) / args.windows
            base = base or (seconds, nll)
            diff = max(abs(a - b) for a, b in zip(nll, base[1]))
            print(f"{mb:>9.0f} {chunk:>6} {seconds:9.2f} {seconds / base[0]:6.2f} {diff:11.2e}")
        del model


if __name__ == "__main__":
    main()
