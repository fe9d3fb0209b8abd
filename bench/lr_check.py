"""Does Adam at a given lr lower its own loss? The check behind the `cpu` grid's per-model lr.

Wanda LR updates no weight, and Wanda BR starts from exactly those weights and masks, so on the first
blocks (whose input is the dense one) BR's error after training ÷ LR's error is Adam's end loss ÷ its
start: below 1, the lr works; above 1, it overshoots. Runs the `cpu` profile's calibration windows
(seed 0) through the model cut to its first `--blocks` blocks; LR is the baseline of the same run.

    python bench/lr_check.py [--model gemma3-270m] [--blocks 2] [--lr 1e-3 2e-4]

Measured 2026-11-30 on 2 cores (block 0, block 1; about 6 minutes a lr beside a running grid):
    gemma3-270m   LR 1.93, 10.85   lr 1e-3: 4.67, 21.85 (×2.4, ×2.0)   lr 2e-4: 0.41, 4.26 (×0.21, ×0.39)
    smollm2-135m  LR 0.191 (block 0)   lr 1e-3: 0.0717 (×0.38)
"""
from __future__ import annotations

import argparse
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--criterion", default="wanda", choices=("wanda", "sparsegpt", "magnitude"))
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 2e-4])
    args = parser.parse_args()

    from reconlib import arch, config, data, models, reconstruct

    net, tokenizer = models.load_model(args.model)
    layers = arch.blocks(net)
    if not 1 <= args.blocks <= len(layers):
        raise SystemExit(f"--blocks must be between 1 and {len(layers)} for {args.model}, got {args.blocks}")
    del layers[args.blocks:]  # the model's own forward runs only the blocks that are left
    start = {k: v.clone() for k, v in layers.state_dict().items()}
    base = config.profile("cpu", model=args.model, criterion=args.criterion, ppl=(), test_error=())
    bos = tokenizer.bos_token_id if models.needs_bos(net) else None
    calib = data.calibration_set(base.calib, tokenizer, base.n_calib, base.seq_len, seed=0, bos=bos)

    def errors(**fields):
        t = time.perf_counter()
        result = reconstruct.prune(net, base.replace(**fields), calib, progress=False)
        layers.load_state_dict(start)  # every run starts from the dense weights
        return result.block_error, time.perf_counter() - t

    lr_errors, seconds = errors(recon="lr")
    print(f"{args.model}, {args.criterion}, blocks 0..{args.blocks - 1}, {base.n_calib} × {base.seq_len} tokens, "
          f"{base.epochs} epochs, batch {base.batch_size}")
    print(f"{'LR (no training)':>18}: " + ", ".join(f"{e:.4g}" for e in lr_errors) + f"   ({seconds:.0f} s)")
    for lr in args.lr:
        br, seconds = errors(recon="br", lr=lr)
        ratios = ", ".join(f"×{b / a:.2f}" for a, b in zip(lr_errors, br))
        verdict = "overshoots" if br[0] > lr_errors[0] else "lowers its loss"
        print(f"{f'BR at lr {lr:g}':>18}: " + ", ".join(f"{e:.4g}" for e in br) +
              f"   ({ratios} of LR; {verdict}; {seconds:.0f} s)")


if __name__ == "__main__":
    main()
