"""Held-out windows and early stopping per unit (RunConfig.holdout, early_stop)."""
import pytest
import torch

from reconlib import arch, data, reconstruct
from reconlib.config import RunConfig
from reconlib.models import tiny_model

from conftest import interrupt_after


def config(**kw):
    # lr high enough that 6 epochs on 4 windows overfit them: the held-out error has a minimum inside
    base = dict(model="tiny", n_calib=4, seq_len=32, epochs=6, batch_size=2, lr=2e-2, device="cpu",
                criterion="sparsegpt", recon="br+gp")
    return RunConfig(**{**base, **kw})


def windows(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (4, 32), generator=g), torch.randint(0, 256, (4, 32), generator=g)


def prune(cfg, calib, held=None, test=None):
    model = tiny_model("llama")
    result = reconstruct.prune(model, cfg, calib, test, holdout=held, progress=False)
    return model, result


def test_holdout_without_early_stop_leaves_every_number_as_without_holdout():
    calib, held = windows()
    test = {"t": windows(1)[0]}
    model_a, plain = prune(config(), calib, test=test)
    model_b, watched = prune(config(holdout=4), calib, held, test)
    assert plain.block_error == watched.block_error and plain.test_block_error == watched.test_block_error
    assert plain.unit_loss == watched.unit_loss
    for (n, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), n
    assert not plain.unit_curves and len(watched.unit_curves) == len(watched.block_error)
    assert all(len(c["train"]) == len(c["heldout"]) == 6 + 1 for c in watched.unit_curves)  # before + each epoch


def test_held_out_windows_never_enter_training():
    """Two different held-out sets, no early stopping: the trained weights are the same, bit for bit. Training on
    the held-out windows (even one step, or their loss added in) would make them differ."""
    calib, held = windows()
    other = windows(7)[1]
    model_a, a = prune(config(holdout=4), calib, held)
    model_b, b = prune(config(holdout=4), calib, other)
    for (n, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), n
    assert a.unit_curves[0]["train"] == b.unit_curves[0]["train"]
    assert a.unit_curves[0]["heldout"] != b.unit_curves[0]["heldout"]  # the held-out windows were measured


def test_early_stop_keeps_the_weights_of_the_best_held_out_point():
    """With single-block GP units the held-out stream's block error is the unit's held-out error at its final
    weights, computed on another path (the streams): it equals the curve at the stop, the curve's minimum."""
    calib, held = windows()
    _, free = prune(config(holdout=4), calib, held)
    _, stopped = prune(config(holdout=4, early_stop=True), calib, held)
    # block 0 sees the same input in both runs: its curve is the same and the stop falls inside it
    c0 = stopped.unit_curves[0]
    assert c0["heldout"] == free.unit_curves[0]["heldout"]
    assert c0["stop"] == min(range(7), key=c0["heldout"].__getitem__)
    assert any(c["stop"] < 6 for c in stopped.unit_curves), "no unit stopped early: the test proves nothing"
    for i, c in enumerate(stopped.unit_curves):
        assert stopped.holdout_block_error[i] == pytest.approx(c["heldout"][c["stop"]], rel=1e-6)
        assert c["heldout"][c["stop"]] == min(c["heldout"])
    for i, c in enumerate(free.unit_curves):  # without early stopping: the last point, whatever the minimum
        assert free.holdout_block_error[i] == pytest.approx(c["heldout"][-1], rel=1e-6)
        assert free.block_error[i] == pytest.approx(c["train"][-1], rel=1e-6)  # trained windows = calib here


def test_early_stop_keeps_masks_and_exact_zeros():
    calib, held = windows()
    model, result = prune(config(holdout=4, early_stop=True, recon="br+gp+cr", criterion="wanda"), calib, held)
    for i, block in enumerate(arch.blocks(model)):
        for name, layer in arch.linears(block).items():
            assert (layer.weight[~result.masks[i][name]] == 0).all()
            assert ((~result.masks[i][name]).sum(1) == layer.weight.shape[1] // 2).all()  # Wanda: half a row
    assert [tuple(c["blocks"]) for c in result.unit_curves] == reconstruct.schedule("br+gp+cr", len(arch.blocks(model)))


def test_config_refuses_early_stop_without_holdout():
    with pytest.raises(ValueError, match="early_stop .* set holdout > 0"):
        RunConfig(recon="br+gp", early_stop=True)
    assert RunConfig(holdout=0, early_stop=False).key() == RunConfig().key()  # records before the fields keep keys


def test_held_out_windows_share_no_token_with_the_calibration_windows():
    ids = torch.arange(3000)  # a stream whose tokens name their position
    both = data.stream_windows(ids, 40, 64, seed=3, holdout=20)
    assert torch.equal(both[:40], data.stream_windows(ids, 40, 64, seed=3))  # the calibration draw is unchanged
    trained = set(both[:40].flatten().tolist())
    assert not trained & set(both[40:].flatten().tolist())


def test_a_killed_run_with_held_out_curves_resumes_identical(tmp_path, monkeypatch):
    """The held-out stream, the curves and the stops survive a kill: the resumed run equals an uninterrupted one."""
    from reconlib import checkpoints

    calib, held = windows()
    cfg = config(holdout=4, early_stop=True, recon="br+gp+cr", epochs=3)

    def run(checkpoint):
        model = tiny_model("llama")
        r = reconstruct.prune(model, cfg, calib, holdout=held, progress=False, checkpoint=checkpoint)
        return r, [p.clone() for p in model.parameters()]

    whole, whole_params = run(None)
    monkeypatch.setattr(checkpoints, "EVERY", 0.0)
    real_train = reconstruct.train
    monkeypatch.setattr(reconstruct, "train", interrupt_after(real_train, 2, []))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ckpt")
    monkeypatch.setattr(reconstruct, "train", real_train)
    resumed, resumed_params = run(tmp_path / "ckpt")
    assert resumed.unit_curves == whole.unit_curves and resumed.holdout_block_error == whole.holdout_block_error
    assert resumed.block_error == whole.block_error
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, whole_params))


def test_cost_reads_each_setting_on_its_own_and_leaves_out_the_more_real_control():
    import pandas as pd
    from reconlib import stopping
    df = pd.DataFrame(dict(setting=["16 × 8", "16 × 8", "16 × 8", "64 × 2"], variant=["fixed", "early stop", "more real", "fixed"],
                           holdout=[16, 16, 0, 16], n_calib=[16, 16, 16, 64], **{"monitor_%": [30.0, 34.0, 0.0, 9.0]}))
    assert stopping.cost(df) == (
        "16 × 8: 16 held-out windows beside 16 calibration windows, and measuring the curves took 32% of the pruning "
        "time (mean over 2 runs), where the more-real control trains each unit on all 32 windows, 2× the Adam steps, "
        "and measures nothing; 64 × 2: 16 held-out windows beside 64 calibration windows, and measuring the curves "
        "took 9% of the pruning time (mean over 1 run), where the more-real control trains each unit on all 80 "
        "windows, 1.2× the Adam steps, and measures nothing")


def test_the_answer_in_words_names_a_rise_a_fall_and_noise_from_the_seeds():
    import pandas as pd
    from reconlib import stopping
    noise = [0.3, -0.2, 0.1, -0.4, 0.2]
    rows = []
    for seed, e in enumerate(noise):
        for variant, rise in (("fixed", 10.0), ("early stop", 0.0)):
            rows.append(dict(seed=seed, setting="16 × 8", variant=variant, recon="br+gp", final_error=20.0,
                             test_error_wikitext2=200.0, test_error_ptb=250.0))
            rows.append(dict(seed=seed, setting="16 × 8", variant=variant, recon="br+gp+cr", final_error=15.0 + e,
                             test_error_wikitext2=200.0 + rise + e, test_error_ptb=250.0 + 5 * noise[seed - 1]))
    rows.append(dict(seed=0, setting="64 × 2", variant="fixed", recon="br+gp+cr", final_error=1.0,
                     test_error_wikitext2=1.0, test_error_ptb=1.0))  # another setting: not read
    answer = stopping.answer(pd.DataFrame(rows), "16 × 8")
    fixed, early = answer.split(" With early stopping, ")
    assert fixed.startswith("With fixed epochs, CR's calibration error falls by -5 [")
    assert "WikiText-2 test error rises by +10 [" in fixed and "p < 0.001, n = 5" in fixed
    assert "PTB test error changes by +0 [" in fixed and "not separable from seed noise (p = 0.5 that it rises" in fixed
    assert "WikiText-2 test error changes by +0 [" in early and "not separable from seed noise" in early
    assert stopping.answer(pd.DataFrame(rows), "4 × 32") == "not measured yet"


def test_machines_names_the_seeds_whose_arms_come_from_two_cpus():
    import pandas as pd
    from reconlib import findings, stopping
    df = pd.DataFrame(dict(model=["m"] * 5, seed=[0, 0, 1, 1, 2], setting=["16 × 8"] * 4 + ["64 × 2"],
                           cpu=["A", "B", "A", "A", "B"]))
    assert stopping.machines(df, "16 × 8").startswith("m seed 0 pairs runs of different CPUs (A; B): their changes carry")
    assert stopping.machines(df[df.seed > 0], "16 × 8") == "each pair's runs come from one CPU model (over all pairs: A)"
    assert stopping.machines(df, "4 × 8") == "not measured yet"
    # a record older than CPU names is not taken for another CPU's name
    older = df.assign(cpu=["A", findings.UNNAMED, "A", "A", "B"])
    assert stopping.machines(older, "16 × 8").startswith("m seed 0 pairs runs of different CPUs (A; older records that name none)")


def test_cr_steps_tabulates_each_variant_and_dashes_what_a_variant_lacks():
    import math
    import pandas as pd
    from reconlib import stopping
    rows = [dict(seed=s, setting="16 × 8", variant=v, recon=r, final_error=10.0 + 0.1 * s - (2 + 0.5 * s) * (r == "br+gp+cr"),
                 holdout_error=math.nan if v == "more real" else 50.0 + 5 * (r == "br+gp+cr") * (s + 1))
            for s in range(3) for v in ("fixed", "more real") for r in ("br+gp", "br+gp+cr")]
    table = stopping.cr_steps(pd.DataFrame(rows), "16 × 8")
    assert list(table.columns) == ["fixed", "more real"] and table.loc["seeds"].tolist() == ["3", "3"]
    fixed = table.loc["final error", "fixed"]  # changes −2, −2.5, −3: t = −8.66 on 2 degrees of freedom
    assert fixed.startswith("-2.5 [") and fixed.endswith(", p 0.99")
    assert table.loc["held-out err.", "fixed"].startswith("+10 [") and table.loc["held-out err.", "more real"] == "—"
