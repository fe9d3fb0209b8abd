import math

import pytest
import torch
import torch.nn.functional as F

from reconlib import evaluate


def test_block_error_is_the_mean_squared_difference():
    a, b = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    assert evaluate.block_error(a, b, chunk=2) == pytest.approx(((a - b) ** 2).mean().item(), rel=1e-6)
    assert evaluate.block_error(a, a) == 0


def test_perplexity_matches_a_direct_computation(tiny):
    _, model = tiny
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    for batch_size in (1, 2, 0):
        assert evaluate.perplexity(model, ids, batch_size, progress=False) == pytest.approx(math.exp(nll.item()),
                                                                                            rel=1e-4)


def test_windows_longer_than_the_context_are_refused(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="exceed the model's context"):
        evaluate.perplexity(model, torch.zeros(1, 1024, dtype=torch.long), progress=False)


def _direct_ppl(model, ids):
    """The old way: the whole (B, T, V) logits of the model's own forward, then one cross-entropy."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    return math.exp(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item())


def test_chunked_perplexity_matches_full_logits(tiny):
    _, model = tiny
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))
    want = _direct_ppl(model, ids)
    for batch_size, chunk in ((2, 7), (0, 1), (0, 0)):  # 45 targets: 7 and 45 chunks, then the automatic size
        got = evaluate.perplexity(model, ids, batch_size, progress=False, chunk=chunk)
        assert got == pytest.approx(want, rel=1e-5)


def test_perplexity_applies_final_logit_softcapping():
    from reconlib import models

    model = models.tiny_model("gemma3")
    model.config.final_logit_softcapping = 5.0
    with torch.no_grad():
        model.model.norm.weight.fill_(30.0)  # logits of tens, so that tanh(z / 5) · 5 bends them
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    want = _direct_ppl(model, ids)
    assert evaluate.perplexity(model, ids, progress=False, chunk=5) == pytest.approx(want, rel=1e-5)
    model.config.final_logit_softcapping = None
    assert _direct_ppl(model, ids) > 1.5 * want  # without the cap it is another number entirely


def test_unknown_logit_post_processing_is_refused(monkeypatch):
    from reconlib import models

    model = models.tiny_model("llama")
    forward = model.forward

    def scaled(*args, **kwargs):  # a family that scales its logits, as Cohere's logit_scale does
        out = forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    monkeypatch.setattr(model, "forward", scaled)
    with pytest.raises(ValueError, match="not its output head"):
        evaluate.perplexity(model, torch.zeros(1, 16, dtype=torch.long), progress=False)
