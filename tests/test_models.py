import pytest
import torch

from reconlib import arch, models, reconstruct
from reconlib.config import RunConfig
from transformers import AutoModelForCausalLM


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'smollm9'.*gemma3-270m.*smollm2-135m"):
        models.load_model("smollm9")


def test_missing_and_unreadable_gguf_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("RECONLIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="GGUF file .*nope.gguf does not exist"):
        models.load_model(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="cannot read GGUF file .*broken.gguf"):
        models.load_model(str(bad))
    assert not list((tmp_path / "cache" / "models").glob("broken*"))  # no half-written cache


def test_a_gguf_installed_elsewhere_reuses_its_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("RECONLIB_CACHE", str(tmp_path / "cache"))
    converted = []

    def convert(gguf, out):
        converted.append(gguf)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    first, second = tmp_path / "venv1" / "m.gguf", tmp_path / "venv2" / "m.gguf"
    for file in (first, second):
        file.parent.mkdir()
        file.write_bytes(b"GGUF" + bytes(64))
    assert models._gguf_cache(first, "m") == models._gguf_cache(second, "m") and converted == [first]
    second.write_bytes(b"GGUF" + bytes(63) + b"\1")  # same size, other content
    assert models._gguf_cache(second, "m") != models._gguf_cache(first, "m") and converted == [first, second]


def test_tiny_families_build(tiny):
    family, model = tiny
    assert len(arch.blocks(model)) == 3
    assert model.config.model_type.startswith({"llama": "llama", "opt": "opt", "gemma3": "gemma3"}[family])


def test_saved_pruned_model_reloads_with_the_same_logits_and_masks(tmp_path, windows):
    from transformers import AutoModelForCausalLM

    model = models.tiny_model("opt")
    calib, test = windows
    result = reconstruct.prune(model, RunConfig(model="tiny", criterion="sparsegpt", n_calib=8, seq_len=32,
                                                batch_size=4, device="cpu"), calib, progress=False)
    folder = models.save_pruned(model, None, tmp_path / "pruned", {"criterion": "sparsegpt"})
    assert (folder / "reconlib_config.json").exists() and (folder / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=test).logits, reloaded(input_ids=test).logits)
    for i, block in enumerate(arch.blocks(reloaded)):
        for name, layer in arch.linears(block).items():
            assert torch.equal(layer.weight != 0, result.masks[i][name])


def test_embedded_model_loads_from_the_cache_and_predicts(smollm):
    model, tokenizer = smollm
    assert model.config.model_type == "llama" and len(arch.blocks(model)) == 30
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_token = model(input_ids=ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_token).strip() == "Paris"
    assert not models.needs_bos(model)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", models.DEFAULT_MODEL])
def test_the_tokenizer_alone_is_the_one_the_model_loads_with(name):
    """Counting a test set's windows reads the tokenizer and the BOS rule without the weights; both must be the
    ones the model's runs cut their windows with."""
    model, tokenizer = models.load_model(name)
    alone, bos = models.load_tokenizer(name)
    text = "The tower is 324 metres tall, about the same height as an 81-storey building."
    assert alone(text).input_ids == tokenizer(text).input_ids and alone.bos_token_id == tokenizer.bos_token_id
    assert bos == models.needs_bos(model) == (name == "tiny-gemma3")


def test_a_block_by_block_run_equals_the_in_memory_one(tmp_path):
    """lazy.load keeps only the embeddings and head in memory; each block is read from the safetensors when its
    unit starts and written out once the streams pass it. Same errors, same weights, a loadable HF folder."""
    from reconlib import lazy, reconstruct
    from reconlib.config import RunConfig

    source = tmp_path / "dense"
    from transformers import AutoTokenizer

    models.save_pruned(models.tiny_model("llama", vocab_size=256), AutoTokenizer.from_pretrained(
        models.resolve("smollm2-135m")), source)
    config = RunConfig(model=str(source), criterion="sparsegpt", recon="br+gp+cr", n_calib=4, seq_len=32,
                       batch_size=2, epochs=1, device="cpu", ppl=(), test_error=())
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    in_memory = models.tiny_model("llama", vocab_size=256)
    whole = reconstruct.prune(in_memory, config, calib, progress=False)

    skeleton, _, blocks = lazy.load(str(source), out=tmp_path / "pruned")
    assert all(p.is_meta for b in arch.blocks(skeleton) for p in b.parameters())  # no block in memory yet
    lazily = reconstruct.prune(skeleton, config, calib, progress=False, blocks=blocks)
    blocks.finish()
    assert lazily.block_error == whole.block_error and lazily.sparsity == whole.sparsity
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, in_memory(input_ids=ids).logits)
