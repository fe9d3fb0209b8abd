"""A pruning pass's state at a unit boundary, saved so that the same call after a kill resumes there and ends
with the same numbers, bit for bit (reconstruct.prune's `checkpoint`)."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from . import atomic

EVERY = 120.0  # seconds between checkpoints (taken at unit boundaries); a 7B unit takes minutes


def save(folder: Path, state, t: int, elapsed: tuple[float, float]) -> None:
    """The pass before unit t: blocks the streams have passed are final and written once each; the rest (blocks
    in flight, their dense copies, the streams, the results so far) is rewritten each time."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(state.pos):
        if not (folder / f"block{i}.pt").is_file():
            _save(state.layers[i].state_dict(), folder / f"block{i}.pt")
    _save({"t": t, "pos": state.pos, "elapsed": elapsed, "result": state.result.__dict__, "writer": writer(),
                  "blocks": {i: state.layers[i].state_dict() for i in state.result.masks if i >= state.pos},
                  "dense": {i: b.state_dict() for i, b in state.dense.items()},
                  "streams": {k: (s.x_sparse, s.dense, s.pos) for k, s in state.streams.items()}},
                 folder / "state.pt")


def resume(folder: Path, state) -> tuple[int, tuple[float, float]]:
    """Load what `save` wrote into `state` → (the first unit to run, (wall, CPU) seconds already spent); (0, (0, 0))
    when the folder holds nothing."""
    if not (folder / "state.pt").is_file():
        return 0, (0.0, 0.0)
    saved = torch.load(folder / "state.pt", weights_only=False)
    if saved.get("writer") != writer():  # another code version or CPU: its blocks would mix into this run's numbers
        shutil.rmtree(folder)
        return 0, (0.0, 0.0)
    for i in range(saved["pos"]):
        state.layers[i].load_state_dict(torch.load(folder / f"block{i}.pt"))
    for i, sd in saved["blocks"].items():
        state.layers[i].load_state_dict(sd)
    for i, sd in saved["dense"].items():
        state.dense[i] = copy.deepcopy(state.layers[i])
        state.dense[i].load_state_dict(sd)
    streams = state.streams
    for k, (x_sparse, x_dense, pos) in saved["streams"].items():
        streams[k].x_sparse, streams[k].dense, streams[k].pos = x_sparse, x_dense, pos
    state.result.__dict__.update(saved["result"])
    state.pos = saved["pos"]
    return saved["t"], saved["elapsed"]


def writer() -> dict:
    """The code and kernels a checkpoint was written with: a run resumes only under the same ones, so that every
    record is one code version's and one CPU's (a pair's two arms are compared bit for bit on one machine)."""
    from . import provenance

    here = provenance.environment()
    return {"source_digest": here["source_digest"], "versions": here["versions"],
            "machine": {k: v for k, v in here["machine"].items() if k != "platform"}}  # CPU, ISA, BLAS, threads


def _save(obj, file: Path) -> None:
    atomic.write(file, lambda part: torch.save(obj, part))
