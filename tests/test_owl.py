import pytest
import torch

from reconlib import arch, owl, reconstruct
from reconlib.config import RunConfig
from reconlib.models import tiny_model


def test_the_mean_over_blocks_is_the_target_and_the_spread_is_two_lambda():
    """OWL and llm-compressor take the unweighted mean over blocks (equal-sized blocks: the mean over weights too)."""
    g = torch.Generator().manual_seed(0)
    for target, lmbda in [(0.7, 0.08), (0.5, 0.05), (0.6, 0.1)]:
        ratios = (torch.rand(30, generator=g) * 0.02).tolist()
        s = owl.allocate(ratios, target, lmbda)
        assert sum(s) / len(s) == pytest.approx(target, abs=1e-12)
        assert max(s) - min(s) == pytest.approx(2 * lmbda)
        assert all(target - 2 * lmbda <= x <= target + 2 * lmbda for x in s)


def test_symmetric_ratios_land_at_target_plus_and_minus_lambda():
    assert owl.allocate([0.0, 0.01], 0.7, 0.08) == pytest.approx([0.78, 0.62])
    assert owl.allocate([0.02, 0.02, 0.02], 0.7, 0.08) == pytest.approx([0.7] * 3)  # no spread: uniform


def test_more_outliers_mean_a_lower_sparsity():
    ratios = [0.010, 0.030, 0.020, 0.001]
    s = owl.allocate(ratios, 0.7, 0.08)
    order = sorted(range(4), key=lambda i: ratios[i])
    assert [s[i] for i in order] == sorted(s, reverse=True)


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    A = torch.ones(100)
    A[:3] = 10.0  # mean 1.27: 5 × mean = 6.35, so exactly the three are outliers
    assert owl.outlier_ratio([A[:40].view(4, 10), A[40:]], m=5) == pytest.approx(0.03)


def test_a_run_gives_each_block_its_share_and_records_it(windows):
    calib, _ = windows
    model = tiny_model("llama")
    config = RunConfig(model="tiny", n_calib=8, seq_len=32, batch_size=4, device="cpu", criterion="wanda",
                       sparsity="0.6", allocation="owl", owl_lambda=0.1)
    result = reconstruct.prune(model, config, calib, progress=False)
    target = result.owl["target"]
    assert len(target) == len(result.block_sparsity) == len(arch.blocks(model))
    assert sum(target) / len(target) == pytest.approx(0.6)
    for want, got in zip(target, result.block_sparsity):
        assert got == pytest.approx(want, abs=0.02)  # Wanda prunes int(cols · s) of every row
    assert result.sparsity == pytest.approx(0.6, abs=0.02)


def test_owl_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="spreads an unstructured ratio"):
        RunConfig(sparsity="2:4", allocation="owl")
    with pytest.raises(ValueError, match="out of \\(0, 1\\)"):
        RunConfig(sparsity="0.9", allocation="owl")
    assert RunConfig(allocation="owl", sparsity="0.7").key() != RunConfig(sparsity="0.7").key()
