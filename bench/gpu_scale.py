"""The paper's scale on one GPU: seconds per block, peak GPU memory and the BR step's share of the GPU's bf16
matmul peak, for LR, BR, BR+GP and BR+GP+CR (SparseGPT, 50%), on a Llama-2-7B-shaped model with random
weights (no Hub needed), against the paper's Table 6 (LLaMA-7B, batch 8; its numbers are reconlib/paper_numbers.csv's).

    python bench/gpu_scale.py                                   # 7B shape, 128 × 2048 tokens, 4 blocks, 1 epoch
    python bench/gpu_scale.py --n 256 --seq-len 1024 --epochs 10 --blocks 2
    python bench/gpu_scale.py --shape tiny --device cpu --dtype bfloat16   # the CPU check of this script's path

Every block of a decoder has the same shape, so a stack of --blocks blocks gives the per-block cost of the
whole model (CR's units are two blocks: its per-block figure is per unit of the schedule, L+1 of them for
L blocks). The matmul peak is measured in the same process (bf16 GEMMs of 8192³), and the BR step's
achieved rate counts 6 · (block parameters) · (tokens per step) FLOPs for its forward and backward, plus
attention's 12 · T · d per token, so the fraction is a lower bound of what the step does.
"""
from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from reconlib import arch, paper, reconstruct
from reconlib.config import RunConfig

SHAPES = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                       vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
                 vocab_size=256, max_position_embeddings=512),
}
PAPER_GB = {r: paper.lookup("llama-7b", "sparsegpt", r, "peak_memory_gb") for r in ("lr", "br", "br+gp", "br+gp+cr")}


def model_of(shape: str, blocks: int):
    config = AutoConfig.for_model("llama", num_hidden_layers=blocks, **SHAPES[shape])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa").eval()


def matmul_peak(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """bf16 TFLOP/s of a large square GEMM on this device (the ceiling the BR step is held against)."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=SHAPES, default="llama-2-7b")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=1, help="Adam epochs per unit (the paper: 10)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--schemes", default="lr,br,br+gp,br+gp+cr")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                   help="autocast dtype of the blocks (auto: bf16 on a GPU, none on a CPU)")
    args = p.parse_args()
    if args.shape == "tiny":
        args.n, args.seq_len = min(args.n, 16), min(args.seq_len, 64)
    device = torch.device(args.device)
    peak = matmul_peak(device)
    calib = torch.randint(0, SHAPES[args.shape]["vocab_size"], (args.n, args.seq_len),
                          generator=torch.Generator().manual_seed(0))
    block_params = sum(p.numel() for p in arch.blocks(model_of("tiny" if args.shape == "tiny" else args.shape, 1))[0]
                       .parameters())
    print(f"{args.shape}, {args.blocks} blocks of {block_params / 1e6:.0f}M parameters, {args.n} × {args.seq_len} "
          f"tokens, batch {args.batch_size}, {args.epochs} epoch(s), autocast {args.dtype}; bf16 matmul peak {peak:.0f} TFLOP/s "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})")
    print(f"{'scheme':>9} {'s/block':>8} {'peak GB':>8} {'paper GB':>8} {'BR step TFLOP/s':>16} {'of peak':>8}")
    for scheme in args.schemes.split(","):
        model = model_of(args.shape, args.blocks)
        config = RunConfig(model=args.shape, criterion="sparsegpt", recon=scheme, n_calib=args.n,
                           seq_len=args.seq_len, batch_size=args.batch_size, epochs=args.epochs,
                           device=str(device), dtype=args.dtype, ppl=(), test_error=())
        steps, real_train = [], reconstruct.train

        def timed_train(*a, **k):  # the Adam part alone, to set against the matmul peak
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = real_train(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            steps.append((time.perf_counter() - start, len(a[0])))
            return out

        reconstruct.train = timed_train
        try:
            result = reconstruct.prune(model, config, calib, progress=False)
        finally:
            reconstruct.train = real_train
        units = len(reconstruct.schedule(scheme, args.blocks))
        d, T = SHAPES[args.shape]["hidden_size"], args.seq_len
        flops = [args.epochs * args.n * T * (6 * block_params + 12 * T * d) * nb / s for s, nb in steps]
        rate = sum(flops) / len(flops) / 1e12 if flops else float("nan")
        print(f"{scheme:>9} {result.seconds / units:8.2f} {result.peak_memory_mb / 1024:8.2f} "
              f"{PAPER_GB[scheme]:8.1f} {rate:16.1f} {rate / peak:8.1%}")


if __name__ == "__main__":
    main()
