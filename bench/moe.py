"""What pruning a mixture of experts costs beside a dense model with as many block weights: seconds of
reconstruct.prune on a tiny Qwen3-MoE (8 experts of width 32, top-2) and a tiny Qwen3 whose MLP holds as many
weights (width 256), per criterion and scheme, the median of a few repeats, and their ratio.

    OMP_NUM_THREADS=1 python bench/moe.py [--n-calib 32] [--seq-len 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def seconds(family: str, overrides: dict, config, calib, repeats: int) -> float:
    from transformers import AutoConfig, AutoModelForCausalLM

    from reconlib import models, reconstruct

    times = []
    for _ in range(repeats):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**models.TINY[family], **overrides}),
                                                 dtype=torch.float32, attn_implementation="sdpa").eval()
        start = time.perf_counter()
        reconstruct.prune(model, config, calib, progress=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from reconlib.config import RunConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--n-calib", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    calib = torch.randint(0, 256, (args.n_calib, args.seq_len), generator=torch.Generator().manual_seed(0))
    dense = {"intermediate_size": 256, "vocab_size": 256}  # 3 · 64 · 256 = 8 experts · 3 · 64 · 32 weights
    print(f"{'criterion':10} {'scheme':9} {'dense s':>8} {'moe s':>8} {'moe/dense':>9}")
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        for recon in ("lr", "br+gp+cr"):
            config = RunConfig(model="tiny", criterion=criterion, recon=recon, n_calib=args.n_calib,
                               seq_len=args.seq_len, batch_size=8, epochs=2, device="cpu")
            d = seconds("qwen3", dense, config, calib, args.repeats)
            m = seconds("qwen3_moe", {"vocab_size": 256}, config, calib, args.repeats)
            print(f"{criterion:10} {recon:9} {d:8.3f} {m:8.3f} {m / d:9.2f}", flush=True)


if __name__ == "__main__":
    main()
