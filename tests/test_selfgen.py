"""Self-generated calibration text (method.md §5) on tiny random models of each family.

Whether langid calls a random model's prefix English is luck, so these tests inject `is_english`; the
real check is tested on real sentences.
"""
import pytest
import torch

import reconlib.models
from reconlib import selfgen
from reconlib.models import DEFAULT_MODEL, needs_bos, resolve, tiny_model

FAMILIES = ["llama", "opt", "gemma3"]


def anything(text):
    return True


@pytest.fixture(scope="module")
def tokenizer():
    # module scope: loaded from the real cache before the per-test cache folder replaces RECONLIB_CACHE
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def models(tokenizer):
    return {family: tiny_model(family, vocab_size=len(tokenizer)) for family in FAMILIES}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECONLIB_CACHE", str(tmp_path))
    return tmp_path


def test_english_check_on_real_text():
    assert selfgen.english("The committee will publish its report on the new bridge next spring.")
    assert not selfgen.english("Der Ausschuss veröffentlicht seinen Bericht im nächsten Frühjahr.")
    assert not selfgen.english("Le comité publiera son rapport sur le nouveau pont au printemps.")


def test_special_ids_cover_eos_bos_and_control_tokens(tokenizer):
    special = set(selfgen.special_ids(tokenizer))
    assert {tokenizer.eos_token_id, tokenizer.bos_token_id} <= special
    assert tokenizer.convert_tokens_to_ids("<repo_name>") in special
    assert tokenizer.convert_tokens_to_ids("the") not in special


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_decoding_matches_full_forward(models, tokenizer, family):
    # 14 tokens: past tiny gemma3's 8-token sliding window, so its cache trimming is exercised too
    model = models[family]
    ids = torch.randint(100, 1000, (2, 3), generator=torch.Generator().manual_seed(0))
    new = selfgen._extend(model, ids, 11, len(tokenizer))
    with torch.inference_mode():
        for k in range(new.shape[1]):
            logits = model(input_ids=torch.cat([ids, new[:, :k]], dim=1)).logits[:, -1]  # (B, V)
            assert torch.equal(logits.argmax(-1), new[:, k])


@pytest.mark.parametrize("family", FAMILIES)
def test_windows_shape_dtype_and_bos(models, tokenizer, family):
    model = models[family]
    x = selfgen.self_generated(model, tokenizer, 3, 16, text_len=24, is_english=anything)
    assert x.shape == (3, 16) and x.dtype == torch.long
    assert int(x.max()) < len(tokenizer)
    special = torch.tensor(selfgen.special_ids(tokenizer))
    if needs_bos(model):
        assert (x[:, 0] == tokenizer.bos_token_id).all()
        x = x[:, 1:]
    assert not torch.isin(x, special).any()


def test_reproducible_by_seed_and_global_rng_untouched(models, tokenizer):
    model = models["llama"]
    state = torch.get_rng_state()
    a = selfgen.self_generated(model, tokenizer, 4, 8, seed=0, text_len=16, cache=False, is_english=anything)
    assert torch.equal(torch.get_rng_state(), state)
    b = selfgen.self_generated(model, tokenizer, 4, 8, seed=0, text_len=16, cache=False, is_english=anything)
    c = selfgen.self_generated(model, tokenizer, 4, 8, seed=1, text_len=16, cache=False, is_english=anything)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cache_written_atomically_and_reused(models, tokenizer, cache, monkeypatch):
    model = models["llama"]
    x = selfgen.self_generated(model, tokenizer, 3, 8, text_len=16, model_name="tiny/llama", is_english=anything)
    files = sorted(p.name for p in (cache / "selfgen").iterdir())
    assert files == ["tiny_llama-n3-seq8-text16-seed0.json", "tiny_llama-n3-seq8-text16-seed0.pt"]  # no leftovers

    def fail(*args, **kwargs):
        raise AssertionError("generated again despite the cache")

    monkeypatch.setattr(selfgen, "generate_texts", fail)
    assert torch.equal(selfgen.self_generated(model, tokenizer, 3, 8, text_len=16, model_name="tiny/llama"), x)
    texts = selfgen.load_texts("tiny/llama", 3, 8, text_len=16)
    assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
    with pytest.raises(AssertionError, match="generated again"):  # another window length is another key
        selfgen.self_generated(model, tokenizer, 3, 9, text_len=16, model_name="tiny/llama")


def test_texts_missing_from_the_cache_are_generated_again_from_the_model_name(models, tokenizer, monkeypatch):
    loaded = []

    def load_model(name):
        loaded.append(name)
        return models["llama"], tokenizer

    monkeypatch.setattr(reconlib.models, "load_model", load_model)
    monkeypatch.setattr(selfgen, "english", anything)
    texts = selfgen.load_texts("tiny/llama", 3, 8, text_len=16)
    assert len(texts) == 3 and selfgen.load_texts("tiny/llama", 3, 8, text_len=16) == texts and loaded == ["tiny/llama"]
    cached = selfgen.self_generated(models["llama"], tokenizer, 3, 8, text_len=16, model_name="tiny/llama")
    fresh = selfgen.self_generated(models["llama"], tokenizer, 3, 8, text_len=16, cache=False, is_english=anything)
    assert torch.equal(cached, fresh)  # the texts a run would have generated


def test_counts_and_lengths_are_checked(models, tokenizer):
    model = models["opt"]
    with pytest.raises(ValueError, match="n must be"):
        selfgen.self_generated(model, tokenizer, -1, 8)
    with pytest.raises(ValueError, match="n must be"):
        selfgen.generate_texts(model, tokenizer, -1)
    with pytest.raises(ValueError, match="text_len"):
        selfgen.self_generated(model, tokenizer, 2, 32, text_len=16)
    empty = selfgen.self_generated(model, tokenizer, 0, 8)
    assert empty.shape == (0, 8) and empty.dtype == torch.long
    assert selfgen.generate_texts(model, tokenizer, 0, progress=False) == []


def fake_extend(model, ids, steps, n_vocab, generator=None, stop=None):
    """Greedy prefixes are 4 plain tokens; every second sampled row hits EOS (id 2) after 3 tokens."""
    if generator is None:
        return torch.full((len(ids), steps), 100)
    rows = torch.full((len(ids), steps), 200)
    rows[1::2, 3] = 2
    return rows


def test_texts_ending_before_the_window_are_redrawn(models, tokenizer, monkeypatch):
    monkeypatch.setattr(selfgen, "_extend", fake_extend)
    model = models["llama"]
    kept = selfgen.generate_texts(model, tokenizer, 3, text_len=12, batch_size=2, min_len=12,
                                  progress=False, is_english=anything)
    assert [len(t) for t in kept] == [12, 12, 12]
    every = selfgen.generate_texts(model, tokenizer, 3, text_len=12, batch_size=2, progress=False,
                                   is_english=anything)
    assert sorted(len(t) for t in every) == [8, 12, 12]  # 5 prefix + 3 sampled, EOS not kept
    with pytest.raises(RuntimeError, match="English"):  # a model that never writes English stops, not hangs
        selfgen.generate_texts(model, tokenizer, 1, text_len=12, progress=False, is_english=lambda t: False)
