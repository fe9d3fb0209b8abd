"""Mixed precision on this CPU: seconds and error of one BR+GP unit of SmolLM2 in fp32, bf16 and fp16 autocast,
as ratios to fp32 measured in the same run.

    python bench/precision.py                       # block 0, 16 × 128 calibration tokens, 2 epochs, 2 threads
    python bench/precision.py --block 12 --n 32

One block, SparseGPT masks on its sparse-stream inputs (fp32, shared by all three), then Adam towards the dense
block's output under each autocast dtype from the same starting weights. Reports the block's error after
training (method.md §4, on the calibration windows, computed in fp32) and the wall time of the Adam part. Whether
bf16 pays depends on the CPU: with bf16 units (amx_bf16 or avx512_bf16 in /proc/cpuinfo) oneDNN runs bf16
matmuls natively (AMX ran them 2.6× fp32 on a machine of this kind); without, it emulates them, far slower.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from reconlib import arch, criteria, data, evaluate, models, provenance, reconstruct, sparsegpt
from reconlib.config import profile


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--block", type=int, default=0)
    p.add_argument("--n", type=int, default=16, help="calibration windows")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = models.load_model(args.model)
    calib = data.calibration_set("wikitext2-valid", tokenizer, args.n, args.seq_len, seed=0)
    x, kwargs = arch.capture(model, calib, 8)
    layers = arch.blocks(model)
    with torch.no_grad():
        for i in range(args.block):  # the dense stream up to the block: its input here
            x = torch.cat([arch.run_block(layers[i], x[s:s + 8], kwargs[i]) for s in range(0, len(x), 8)])
        dense = copy.deepcopy(layers[args.block])
        target = torch.cat([arch.run_block(dense, x[s:s + 8], kwargs[args.block]) for s in range(0, len(x), 8)])
    block = layers[args.block]
    stats = criteria.Stats(arch.linears(block), hessian=True)
    with torch.no_grad():
        for s in range(0, len(x), 8):
            arch.run_block(block, x[s:s + 8], kwargs[args.block])
            stats.flush()
    stats.remove()
    masks = {}
    for name, layer in arch.linears(block).items():
        layer.weight.data, masks[name], _ = sparsegpt.solve(layer.weight.data, stats.H(name), 0.5, 0, 0)
    machine = provenance.machine()
    print(f"{args.model} block {args.block}, {args.n} × {args.seq_len} tokens, {args.epochs} epochs, batch 2, "
          f"{args.threads} threads; {machine['cpu_model']}, {machine['cpu_capability']}, native bf16: "
          f"{', '.join(machine['bf16_units']) or 'none'}")
    print(f"{'autocast':>9} {'seconds':>8} {'× fp32':>7} {'error after':>12} {'× fp32':>7}")
    base = None
    for dtype in ("float32", "bfloat16", "float16"):
        config = profile("cpu", model=args.model, recon="br+gp", n_calib=args.n, seq_len=args.seq_len,
                         epochs=args.epochs, dtype=dtype)
        trained = copy.deepcopy(block)
        device, amp = config.placement
        start = time.perf_counter()
        reconstruct.train([trained], [masks], x, target, [kwargs[args.block]], config, device, amp, seed=0)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            out = torch.cat([arch.run_block(trained, x[s:s + 8], kwargs[args.block]) for s in range(0, len(x), 8)])
        error = evaluate.block_error(target, out)
        base = base or (seconds, error)
        print(f"{dtype:>9} {seconds:8.1f} {seconds / base[0]:7.2f} {error:12.4g} {error / base[1]:7.3f}")


if __name__ == "__main__":
    main()
