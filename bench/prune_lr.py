"""Time the whole LR pass per criterion as a ratio to the floor measured in the same run.

floor = one dense forward pass of the calibration set through every block, twice (the two streams).
"magnitude+refit" is the exact LR (refit.py) on magnitude's masks, "admm" ADMM's iterations and its exact solve:
their solver seconds over the floor price the solve in `grid.cost` (SOLVE_SLOWDOWN there).
Each measurement runs in its own process so that its peak memory (RSS, or CUDA peak) is its own.

    python bench/prune_lr.py [--model smollm2-135m] [--n-calib 16] [--seq-len 256] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch


def config_of(kind: str, args):
    """The LR run a pass times (the floor reads magnitude's, which prunes nothing it has to solve for)."""
    from reconlib.config import RunConfig

    criterion = {"floor": "magnitude", "magnitude+refit": "magnitude"}.get(kind, kind)
    return RunConfig(model=args.model, criterion=criterion, recon="lr", refit=kind == "magnitude+refit",
                     n_calib=args.n_calib, seq_len=args.seq_len, batch_size=args.batch_size, device=args.device)


def measure(kind: str, args) -> dict:
    from reconlib import admm, arch, criteria, data, memory, models, reconstruct, refit, sparsegpt, streams

    model, tokenizer = models.load_model(args.model)
    calib = data.calibration_set("boolq-passages", tokenizer, args.n_calib, args.seq_len, seed=0)
    config = config_of(kind, args)
    device, amp = config.placement
    spent = {"solver": 0.0, "stats": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent[key] += time.perf_counter() - start
            return out
        return wrapper

    sparsegpt.solve = timed(sparsegpt.solve, "solver")
    admm.solve = timed(admm.solve, "solver")  # its exact solve inside
    if kind == "magnitude+refit":
        refit.solve = timed(refit.solve, "solver")
    # the statistics' own arithmetic: Σx², and SparseGPT's Σxxᵀ, which costs about a block forward at d = 576
    criteria.Stats.flush = timed(criteria.Stats.flush, "stats")
    start = time.perf_counter()
    if kind == "floor":
        x, kwargs = arch.capture(model, calib, args.batch_size)
        for i, block in enumerate(arch.blocks(model)):
            with streams.on(device, block):
                for _ in range(2):
                    y = streams.run([block], x, [kwargs[i]], device, args.batch_size, amp)
            x = y
    else:
        reconstruct.prune(model, config, calib, progress=False)
    seconds = time.perf_counter() - start
    peak = memory.peak_mb(device)
    return {"kind": kind, "seconds": seconds, "solver_seconds": spent["solver"], "stats_seconds": spent["stats"],
            "peak_mb": peak}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-calib", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kinds", default="floor,magnitude,wanda,sparsegpt,magnitude+refit,admm",
                        help="the passes to time, comma-separated; floor always runs first")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    rows = []
    for kind in ["floor"] + [k for k in args.kinds.split(",") if k != "floor"]:
        cmd = [sys.executable, __file__, "--one", kind, "--model", args.model, "--n-calib", str(args.n_calib),
               "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    floor = rows[0]["seconds"]
    print(f"model {args.model}, {args.n_calib} × {args.seq_len} calibration tokens, device {args.device}")
    print(f"{'pass':<16} {'seconds':>8} {'× floor':>8} {'solver s':>9} {'stats s':>8} {'(s-solver) × floor':>19} "
          f"{'(s-solver-stats) × floor':>25} {'peak MB':>8}")
    for r in rows:
        rest = (r["seconds"] - r["solver_seconds"]) / floor
        bare = (r["seconds"] - r["solver_seconds"] - r["stats_seconds"]) / floor
        print(f"{r['kind']:<16} {r['seconds']:8.1f} {r['seconds'] / floor:8.2f} {r['solver_seconds']:9.1f} "
              f"{r['stats_seconds']:8.1f} {rest:19.2f} {bare:25.2f} {r['peak_mb']:8.0f}")
    from reconlib import grid

    for r in rows:  # the exact solve in tokens' worth (the floor passes 2 × n_calib × seq_len), beside its price
        if priced := grid.solve_tokens(config_of(r["kind"], args)):
            measured = r["solver_seconds"] / floor * 2 * args.n_calib * args.seq_len
            print(f"{r['kind']}: the solve is worth {measured:,.0f} tokens through the blocks; grid.solve_tokens "
                  f"prices {priced:,.0f} (SOLVE_SLOWDOWN {grid.SOLVE_SLOWDOWN:g}): measured / priced {measured / priced:.2f}")


if __name__ == "__main__":
    main()
