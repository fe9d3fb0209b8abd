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
