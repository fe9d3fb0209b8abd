"""Adam steps per second on one block, achieved FLOP/s as a ratio to a matmul peak measured in the same
process, and peak memory per scheme (each scheme in its own process, on the first blocks of the model).

    python bench/reconstruct.py [--model smollm2-135m] [--seq-len 256] [--batch-size 8] [--blocks 4]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def matmul_peak(device, n=2048, repeats=5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def adam_steps(args) -> dict:
    from reconlib import arch, data, models, reconstruct
    from reconlib.config import RunConfig

    model, tokenizer = models.load_model(args.model)
    config = RunConfig(model=args.model, recon="br", n_calib=args.batch_size * args.steps, seq_len=args.seq_len,
                       batch_size=args.batch_size, epochs=1, device=args.device)
    device, amp = config.placement
    calib = data.calibration_set("boolq-passages", tokenizer, config.n_calib, args.seq_len, seed=0)
    x, kwargs = arch.capture(model, calib, args.batch_size)
    block = arch.blocks(model)[0].to(device)
    masks = [{name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in arch.linears(block).items()}]
    target = x + 0.01 * torch.randn_like(x)
    reconstruct.train([block], masks, x[:args.batch_size], target[:args.batch_size], [kwargs[0]], config.replace(
        n_calib=args.batch_size), device, amp, seed=0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    reconstruct.train([block], masks, x, target, [kwargs[0]], config, device, amp, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.batch_size * args.seq_len
    linear_params = sum(layer.weight.numel() for layer in arch.linears(block).values())
    attn_dim = model.config.num_attention_heads * getattr(model.config, "head_dim",
                                                          model.config.hidden_size // model.config.num_attention_heads)
    forward = 2 * linear_params * tokens + 4 * args.seq_len * attn_dim * tokens  # matmuls of one step
    flops = 3 * forward * args.steps  # backward ≈ 2 × forward
    peak = matmul_peak(device)
    return {"steps_per_s": args.steps / seconds, "flops": flops / seconds, "peak": peak}


def scheme_memory(scheme: str, args) -> dict:
    from torch import nn

    from reconlib import arch, data, models, reconstruct
    from reconlib.config import RunConfig

    model, tokenizer = models.load_model(args.model)
    layers = arch.blocks(model)
    model.model.layers = nn.ModuleList(list(layers)[:args.blocks])  # the first blocks are enough for memory
    model.config.num_hidden_layers = args.blocks
    config = RunConfig(model=args.model, recon=scheme, criterion="sparsegpt", n_calib=args.batch_size * 2,
                       seq_len=args.seq_len, batch_size=args.batch_size, epochs=1, device=args.device)
    calib = data.calibration_set("boolq-passages", tokenizer, config.n_calib, args.seq_len, seed=0)
    result = reconstruct.prune(model, config, calib, progress=False)
    return {"scheme": scheme, "seconds": result.seconds, "peak_mb": result.peak_memory_mb}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(adam_steps(args) if args.one == "adam" else scheme_memory(args.one, args)))
        return
    common = ["--model", args.model, "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
              "--steps", str(args.steps), "--blocks", str(args.blocks), "--device", args.device]
    run = lambda one: json.loads(subprocess.run([sys.executable, __file__, "--one", one, *common], capture_output=True,  # noqa: E731
                                                text=True, check=True).stdout.strip().splitlines()[-1])
    adam = run("adam")
    print(f"model {args.model}, one block, batch {args.batch_size} × {args.seq_len} tokens, device {args.device}")
    print(f"Adam steps/s {adam['steps_per_s']:.2f}; achieved {adam['flops'] / 1e9:.1f} GFLOP/s; matmul peak "
          f"{adam['peak'] / 1e9:.1f} GFLOP/s; ratio {adam['flops'] / adam['peak']:.2f}")
    print(f"\npeak memory per scheme (first {args.blocks} blocks, SparseGPT, 1 epoch, {args.batch_size * 2} windows)")
    print(f"{'scheme':<10} {'seconds':>8} {'peak MB':>8}")
    for scheme in ("lr", "br", "br+gp", "br+gp+cr"):
        r = run(scheme)
        print(f"{scheme:<10} {r['seconds']:8.1f} {r['peak_mb']:8.0f}")


if __name__ == "__main__":
    main()
