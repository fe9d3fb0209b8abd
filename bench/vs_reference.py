"""reconlib's LR pruning beside the Wanda paper's reference code (locuslab/wanda, lib/prune.py): the same
model (smollm2-135m, fp32, CPU), the same 32 × 512 WikiText-2-valid calibration windows, each side in its
own process. Per row: prune seconds, the same in dense forwards (32 windows through the 30 blocks at batch 8,
embeddings included, lm_head not, timed in that process before pruning), the final-block error of each side
measured by the same code here, and how many block-0 mask entries differ (block 0 sees identical inputs).

    git clone --depth 1 <locuslab/wanda> /tmp/wanda    # any checkout of the Wanda repository: its lib/ is used
    python bench/vs_reference.py --wanda /tmp/wanda [--rows "sparsegpt 0.5,wanda 2:4"] [--sides fresh,grid]

reconlib's sides, each its own process after the reference's:
- fresh: the default LR run, nothing shared: statistics, sparse and dense forward per block;
- grid: the same run finding x̄_1..x̄_L of these windows in the dense-stream store (streams.py), as every run of
  a grid after the first of its model and windows does; the store is filled before the clock starts;
- sequential, sequential-grid: `sequential=True`, one forward per block for statistics and output together
  (each linear pruned as its input arrives); its masks differ from the reference's beyond q/k/v;
- no-data (magnitude rows only): `n_calib=0`, masks from the weights alone, no error curve.

The reference is imported from --wanda at run time and runs unmodified: its own prune_sparsegpt /
prune_wanda / prune_magnitude drivers, Catcher, SparseGPT and WrappedGPT. We monkeypatch rather than
re-implement the driver loop, so the loop itself (per-window statistics on the unpruned block, prune every
linear, recompute, swap) stays the reference's. What the patches do:
- `lib.prune.get_loaders` returns our windows; `model.seqlen = 512`; `model.hf_device_map = {}`;
- `torch.cuda.synchronize` / `empty_cache` are no-ops, and for magnitude `Tensor.cuda` is the identity (CPU);
- transformers 5 decoder layers also need `position_embeddings` (and take `cache`, `use_cache`), which the
  Catcher drops and the per-layer calls do not pass. Each block is wrapped, for the duration, in `AllKwargs`,
  which adds every keyword argument the model gave block 0 in a one-window forward, except the two the
  reference passes itself (attention_mask, position_ids). They depend on positions only, and every window is
  an unpadded 512-token sequence, so one recording serves all windows and blocks.
Both prune outputs are scored alike (`block_errors`): hooks on every block of the dense and of the pruned
model, batch 8, (1/(N·T·d)) ‖x̄_i − x_i‖² per block in float64. Reference timings cover its whole prune call
(input capture included); reconlib's cover `reconstruct.prune`, which also propagates both streams and
records its own block errors (printed as "(own)", a check of the error's definition). ours/ref is the ratio
of the two times in dense forwards, each measured in its own process, so that load on the machine in
between cancels; the raw seconds are printed too.

Read the error columns against the reference's own rounding noise: SparseGPT's column sweep amplifies
fp32-level differences in H (flipped near-threshold entries, then OBS cascades, then different inputs to
the next block). On sparsegpt 0.5 at 1 thread, feeding the reference the same 32 windows in reverse order
(H equal in exact arithmetic) flipped 160 block-0 mask entries and moved its final error from 166.8 to 171.3.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

SIDES = ("reference", "fresh", "grid", "sequential", "sequential-grid", "no-data")
ROWS = ("sparsegpt 0.5", "wanda 0.5", "magnitude 0.5", "sparsegpt 2:4", "wanda 2:4", "magnitude 2:4")
N_CALIB, SEQ_LEN, BATCH = 32, 512, 8


def load():
    from reconlib import data, models

    model, tok = models.load_model("smollm2-135m")
    model.eval().requires_grad_(False)
    if data.data_dir() is None:
        sys.exit("set RECONLIB_DATA_DIR to the folder holding wikitext-2-tokenized/valid.txt (see README)")
    text = (data.data_dir() / "wikitext-2-tokenized" / "valid.txt").read_text()
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    return model, tok, data.stream_windows(ids, N_CALIB, SEQ_LEN, seed=0)


@torch.no_grad()
def forward_blocks(model, ids: torch.Tensor, sink: list | None = None) -> None:
    """One pass of `ids` through the embeddings and every block at batch 8 (the base model: no lm_head);
    with a sink, each batch's list of block outputs is appended to it."""
    blocks = model.model.layers
    for start in range(0, len(ids), BATCH):
        outs = []
        hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
                 for b in blocks] if sink is not None else []
        model.model(input_ids=ids[start:start + BATCH], use_cache=False)
        for h in hooks:
            h.remove()
        if sink is not None:
            sink.append(outs)


def block_errors(dense_outs: list, model, ids: torch.Tensor) -> list[float]:
    """Per block, mean over all elements of (dense − pruned)², summed in float64."""
    pruned_outs = []
    forward_blocks(model, ids, pruned_outs)
    sums = torch.zeros(len(model.model.layers), dtype=torch.float64)
    for dense_b, pruned_b in zip(dense_outs, pruned_outs):
        for i, (a, b) in enumerate(zip(dense_b, pruned_b)):
            sums[i] += (a - b).pow(2).sum(dtype=torch.float64)
    return (sums / (ids.numel() * model.config.hidden_size)).tolist()


class AllKwargs(nn.Module):
    """A decoder block that adds the keyword arguments the reference's Catcher does not keep."""

    def __init__(self, inner: nn.Module, extra: dict):
        super().__init__()
        self.inner, self.extra = inner, extra

    def forward(self, x, **kwargs):
        return self.inner(x, **{**self.extra, **kwargs})


def block0_kwargs(model, ids: torch.Tensor) -> dict:
    seen = {}

    class Stop(Exception):
        pass

    def grab(module, args, kwargs):
        seen.update(kwargs)
        raise Stop  # nothing past the embeddings is needed

    h = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model.model(input_ids=ids[:1], use_cache=False)
    except Stop:
        pass
    h.remove()
    return {k: v for k, v in seen.items() if k not in ("attention_mask", "position_ids")}


def prune_reference(model, tok, calib, criterion: str, sparsity: str, wanda_dir: str) -> None:
    sys.path.insert(0, wanda_dir)
    from lib import prune as ref  # noqa: PLC0415 (the reference lives outside this repo)

    torch.cuda.synchronize = torch.cuda.empty_cache = lambda *a, **k: None
    if criterion == "magnitude":
        torch.Tensor.cuda = lambda self, *a, **k: self  # its global sort calls .cuda(); the threshold is the same
    ref.get_loaders = lambda *a, **k: ([(w[None], None) for w in calib], None)
    model.seqlen, model.hf_device_map = SEQ_LEN, {}
    # main.py: N:M runs with sparsity_ratio 0.5 and prune_n, prune_m = N, M ("2:4" prunes 2 of every 4)
    n, m = map(int, sparsity.split(":")) if ":" in sparsity else (0, 0)
    args = argparse.Namespace(sparsity_ratio=0.5 if n else float(sparsity), nsamples=len(calib), seed=0,
                              use_variant=False)
    layers = model.model.layers
    extra = block0_kwargs(model, calib)
    originals = list(layers)
    for i, block in enumerate(originals):
        layers[i] = AllKwargs(block, extra)
    try:
        fn = {"sparsegpt": ref.prune_sparsegpt, "wanda": ref.prune_wanda, "magnitude": ref.prune_magnitude}[criterion]
        fn(args, model, tok, torch.device("cpu"), prune_n=n, prune_m=m)
    finally:
        for i, block in enumerate(originals):
            layers[i] = block


def one(args) -> dict:
    """One side of one row, in this process."""
    torch.set_num_threads(args.threads)
    criterion, sparsity = args.row.split()
    model, tok, calib = load()
    forward_blocks(model, calib[:BATCH])  # warm-up, untimed
    dense_outs, start = [], time.perf_counter()
    forward_blocks(model, calib, dense_outs)  # the unit of time; it also keeps x̄_1..x̄_L for the error
    dense_s = time.perf_counter() - start
    own = None
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    if args.side == "reference":
        prune_reference(model, tok, calib, criterion, sparsity, args.wanda)
        prune_s = time.perf_counter() - start
        # the reference keeps no masks: its pruned entries are the exact zeros (True = kept, as reconlib's)
        masks0 = {k: m.weight != 0 for k, m in model.model.layers[0].named_modules() if isinstance(m, nn.Linear)}
    else:
        from reconlib import arch, reconstruct, streams
        from reconlib.config import RunConfig

        no_data = args.side == "no-data"  # magnitude asked for no error curve: the weights alone
        cfg = RunConfig(criterion=criterion, sparsity=sparsity, recon="lr", n_calib=0 if no_data else N_CALIB,
                        seq_len=SEQ_LEN, batch_size=BATCH, ppl=(), test_error=(), device="cpu",
                        sequential=args.side.startswith("sequential"))
        store = None
        if args.side.endswith("grid"):  # an earlier run of the grid left x̄_1..x̄_L of these windows in the store
            store = Path(tempfile.mkdtemp(prefix="vs_reference-store-"))
            x, kwargs = arch.capture(model, calib, BATCH)
            blocks = dict(enumerate(arch.blocks(model)))
            streams.Streams(x, streams.store_folder(store, "smollm2", calib, BATCH, torch.device("cpu"), None)) \
                .x_dense(len(blocks), blocks, kwargs, torch.device("cpu"), BATCH)
            start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        r = reconstruct.prune(model, cfg, calib[:0] if no_data else calib, progress=False, store=store,
                              model_id="smollm2")
        prune_s, masks0, own = time.perf_counter() - start, r.masks[0], r.block_error
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds of the prune alone, all threads
    usage = {"user_s": usage.ru_utime - before.ru_utime, "system_s": usage.ru_stime - before.ru_stime}
    torch.save(masks0, args.masks)
    return {"dense_s": dense_s, "prune_s": prune_s, "block_error": block_errors(dense_outs, model, calib),
            "own_block_error": own, **usage}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wanda", required=True, help="a folder holding the reference's lib/ (git archive HEAD lib)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", default=",".join(SIDES[1:]), help=f"reconlib's sides, from: {', '.join(SIDES[1:])}")
    parser.add_argument("--out", help="write every row's results, per-block curves included, to this JSON file")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--masks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one(args)))
        return
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if bad := [r for r in rows if r not in ROWS]:
        parser.error(f"unknown rows {bad}: use {', '.join(ROWS)}")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if bad := [s for s in sides if s not in SIDES]:
        parser.error(f"unknown sides {bad}: use {', '.join(SIDES)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results, tmp = {}, Path(tempfile.mkdtemp(prefix="vs_reference-"))
    print(f"{'row':<14} {'side':<16} {'prune s':>7} {'fwd':>5} {'÷ ref':>6} {'final':>8} {'(own)':>8} "
          f"{'sys s':>6} {'block-0 mask diff':>18}")
    for row in rows:
        res = {}
        for side in ["reference"] + [s for s in sides if s != "no-data" or row.startswith("magnitude")]:
            # one after the other: no two share the CPU
            cmd = [sys.executable, __file__, "--wanda", args.wanda, "--threads", str(args.threads), "--side", side,
                   "--row", row, "--masks", str(tmp / f"{side}.pt")]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{side} {row} failed:\n{out.stderr[-4000:]}")
            r = res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            ref_m, our_m = (torch.load(tmp / f"{s}.pt") for s in ("reference", side))
            r["block0_mask_diff"] = sum(int((ref_m[k] != our_m[k]).sum()) for k in ref_m)
            fwd = r["prune_s"] / r["dense_s"]
            ratio = fwd / (res["reference"]["prune_s"] / res["reference"]["dense_s"])
            own = r["own_block_error"][-1] if r.get("own_block_error") else float("nan")
            print(f"{row:<14} {side:<16} {r['prune_s']:7.1f} {fwd:5.2f} {ratio:6.2f} {r['block_error'][-1]:8.4g} "
                  f"{own:8.4g} {r['system_s']:6.1f} {r['block0_mask_diff']:>8} / {sum(m.numel() for m in ref_m.values())}",
                  flush=True)
        results[row] = res
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
