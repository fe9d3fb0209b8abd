"""Models larger than host memory: the skeleton on the meta device, one block's weights read from the
safetensors shards while the block is processed, and written to a pruned checkpoint as soon as the streams
have passed it. Peak host memory is then about the blocks in flight plus the streams, not the whole model.

    model, tokenizer, blocks = lazy.load("smollm2-135m", out="pruned/")
    reconstruct.prune(model, config, calib, blocks=blocks)   # then pruned/ is an ordinary HF folder
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from safetensors.torch import save_file

from . import arch, models, moe

BLOCK_PREFIXES = tuple(f"{path}." for path in arch.BLOCK_PATHS)


class Blocks:
    """Block i's weights in and out of memory: `load(i)` before its first unit, `done(i)` once the streams
    have passed it (written to `out`, then back to the meta device)."""

    def __init__(self, model, folder: Path, out: Path | None):
        self.model, self.out = model, out
        index = folder / "model.safetensors.index.json"
        weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else \
            {k: "model.safetensors" for k in safe_open(folder / "model.safetensors", "pt").keys()}
        self.files = {name: folder / file for name, file in weight_map.items()}
        self.prefix = next(p for p in BLOCK_PREFIXES if any(n.startswith(p) for n in self.files))
        self.written: dict[str, str] = {}

    def names(self, i: int | None) -> list[str]:
        """Tensor names of block i, or (None) of everything outside the blocks."""
        if i is None:
            return [n for n in self.files if not n.startswith(self.prefix)]
        return [n for n in self.files if n.startswith(f"{self.prefix}{i}.")]

    def load(self, i: int | None) -> None:
        for name in self.names(i):
            with safe_open(self.files[name], "pt") as f:
                set_module_tensor_to_device(self.model, name, "cpu", value=f.get_tensor(name).float())

    def done(self, i: int) -> None:
        if self.out is not None:
            tensors = {n: self.model.get_parameter(n).detach().contiguous() for n in self.names(i)}
            file = f"block-{i:05d}.safetensors"
            save_file(tensors, self.out / file, metadata={"format": "pt"})
            self.written |= {n: file for n in tensors}
        for name in self.names(i):
            set_module_tensor_to_device(self.model, name, "meta")

    def finish(self, tokenizer=None) -> None:
        """Write what lies outside the blocks, the index, the config and the tokenizer: an HF folder."""
        if self.out is None:
            return
        rest = {n: self.model.get_parameter(n).detach().contiguous() for n in self.names(None)}
        save_file(rest, self.out / "rest.safetensors", metadata={"format": "pt"})
        self.written |= {n: "rest.safetensors" for n in rest}
        (self.out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": self.written}))
        self.model.config.save_pretrained(self.out)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.out)


def load(name_or_path: str, out: str | Path | None = None):
    """(model skeleton, tokenizer, Blocks): only the embeddings, final norm and head are in memory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(models.resolve(name_or_path))
    if not folder.is_dir():
        raise ValueError(f"block-by-block loading reads local safetensors: {name_or_path!r} resolves to "
                         f"{folder}; download it first (huggingface-cli download) and pass the folder")
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary tables) real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    if any(moe.experts(block) for block in arch.blocks(model)):
        raise ValueError(f"block-by-block loading (--low-memory) cannot read {config.model_type}: it reads tensors by "
                         "name, and transformers stores a mixture of experts' experts one by one on disk but fused "
                         "into 3-D parameters in memory. Drop --low-memory for this model.")
    if out is not None:
        out = Path(out)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    blocks = Blocks(model, folder, out)
    blocks.load(None)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.name_or_path = name_or_path
    return model.eval(), AutoTokenizer.from_pretrained(folder), blocks
