import pytest
import torch

from reconlib import arch, checkpoints, memory, reconstruct
from reconlib.config import RunConfig

SCHEMES = ["lr", "br", "br+gp", "br+gp+cr"]


def config(**kw):
    base = dict(model="tiny", n_calib=8, seq_len=32, epochs=4, batch_size=4, lr=1e-3, device="cpu")
    return RunConfig(**{**base, **kw})


def test_cr_schedule_has_l_plus_1_overlapping_windows():
    assert reconstruct.schedule("br+gp+cr", 4) == [(0,), (0, 1), (1, 2), (2, 3), (3,)]
    assert reconstruct.schedule("br", 3) == [(0,), (1,), (2,)]
    with pytest.raises(ValueError, match="needs at least two blocks"):
        reconstruct.schedule("br+gp+cr", 1)


@pytest.mark.parametrize("recon", SCHEMES)
@pytest.mark.parametrize("sparsity", ["0.5", "2:4"])
def test_pruned_weights_stay_exactly_zero_with_the_asked_pattern(tiny, windows, recon, sparsity):
    _, model = tiny
    calib, test = windows
    result = reconstruct.prune(model, config(recon=recon, sparsity=sparsity, criterion="wanda", epochs=1), calib,
                               {"t": test}, progress=False)
    for i, block in enumerate(arch.blocks(model)):
        for name, layer in arch.linears(block).items():
            mask = result.masks[i][name]
            assert (layer.weight[~mask] == 0).all()
            if sparsity == "2:4":
                assert (mask.view(mask.shape[0], -1, 4).sum(-1) == 2).all()
            else:  # Wanda: exactly half of every row
                assert ((~mask).sum(1) == mask.shape[1] // 2).all()
    assert result.sparsity == pytest.approx(0.5)
    assert len(result.block_error) == len(result.test_block_error["t"]) == model.config.num_hidden_layers


def test_lr_equals_zero_epochs_and_leaves_wanda_survivors_untouched(windows):
    from reconlib.models import tiny_model

    calib, _ = windows
    model = tiny_model("llama")
    dense = {n: p.clone() for n, p in model.named_parameters()}
    reconstruct.prune(model, config(recon="lr", criterion="wanda", epochs=4), calib, progress=False)
    for n, p in model.named_parameters():
        kept = p != 0
        assert torch.equal(p[kept], dense[n][kept]), n  # no gradient step, no update


def test_each_scheme_lowers_the_final_calibration_error(windows):
    """BR < LR, BR+GP < BR, CR < BR+GP on a tiny Llama (method.md §7 finding 1)."""
    from reconlib.models import tiny_model

    calib, _ = windows
    final = {}
    for recon in SCHEMES:
        model = tiny_model("llama")
        final[recon] = reconstruct.prune(model, config(recon=recon, criterion="magnitude", epochs=8), calib,
                                         progress=False).final_error
    assert final["lr"] > final["br"] > final["br+gp"] > final["br+gp+cr"], final


def test_same_config_and_seed_give_identical_masks_and_weights(windows):
    from reconlib.models import tiny_model

    calib, _ = windows
    runs = []
    for _ in range(2):
        model = tiny_model("llama")
        result = reconstruct.prune(model, config(recon="br+gp", criterion="sparsegpt"), calib, progress=False)
        runs.append((result, [p.clone() for p in model.parameters()]))
    (r1, p1), (r2, p2) = runs
    assert r1.block_error == r2.block_error
    assert all(torch.equal(r1.masks[i][n], r2.masks[i][n]) for i in r1.masks for n in r1.masks[i])
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_self_generated_windows_feed_reconstruction_but_not_masks(windows):
    from reconlib.models import tiny_model

    calib, _ = windows
    extra = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(5))
    plain = reconstruct.prune(tiny_model("llama"), config(recon="lr"), calib, progress=False)
    with_extra_lr = reconstruct.prune(tiny_model("llama"), config(recon="lr"), calib, extra=extra, progress=False)
    # LR: masks come from real data only, so extra windows change nothing
    assert all(torch.equal(plain.masks[i][n], with_extra_lr.masks[i][n]) for i in plain.masks for n in plain.masks[i])
    assert plain.block_error == pytest.approx(with_extra_lr.block_error)
    br = reconstruct.prune(tiny_model("llama"), config(recon="br"), calib, progress=False)
    br_extra = reconstruct.prune(tiny_model("llama"), config(recon="br"), calib, extra=extra, progress=False)
    assert br.block_error != br_extra.block_error


def test_n_m_that_does_not_divide_a_width_fails_before_any_work(windows):
    from reconlib.models import tiny_model

    model = tiny_model("llama")
    with pytest.raises(ValueError, match="M=5 does not divide the input width 64 of block 0"):
        reconstruct.prune(model, config(sparsity="2:5"), windows[0], progress=False)
    assert all((p != 0).all() for p in arch.blocks(model).parameters() if p.ndim == 2)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="Linux RSS high-water mark")
def test_peak_memory_is_the_runs_own_not_the_processes(windows):
    """A notebook kernel runs many configs: an earlier 1.5 GB peak must not show up in a later run's record."""
    from reconlib.models import tiny_model

    calib, _ = windows
    before = memory.peak_mb(torch.device("cpu"))
    big = torch.ones(1536 * 2**20 // 4)  # 1.5 GB, touched
    del big
    result = reconstruct.prune(tiny_model("llama"), config(recon="lr"), calib, progress=False)
    assert result.peak_memory_mb < before + 1000, (before, result.peak_memory_mb)


@pytest.mark.parametrize("recon", ["lr", "br+gp+cr"])
def test_a_stored_dense_stream_gives_the_same_run_and_is_read_back(windows, tmp_path, monkeypatch, recon):
    """The dense stream is shared between runs through a store; the numbers must not change."""
    from reconlib import streams
    from reconlib.models import tiny_model

    calib, test = windows
    results = []
    for store in (None, tmp_path, tmp_path):  # without, then the run that writes it, then one that reads it
        model = tiny_model("llama")
        if len(results) == 2:  # every x̄ is in the store now: a dense block must never run
            monkeypatch.setattr(streams.Streams, "_save", lambda *a: pytest.fail("x̄ computed again"))
        r = reconstruct.prune(model, config(recon=recon, criterion="sparsegpt", epochs=1), calib, {"t": test},
                              progress=False, store=store, model_id="tiny")
        results.append((r.block_error, r.test_block_error, [p.clone() for p in model.parameters()]))
    assert len(list(tmp_path.rglob("*.pt"))) == 2 * 3  # x̄_1..x̄_3 of the calibration and the test windows
    for errors, test_errors, params in results[1:]:
        assert errors == results[0][0] and test_errors == results[0][1]
        assert all(torch.equal(a, b) for a, b in zip(params, results[0][2]))


def test_a_run_at_another_thread_count_never_reads_the_stored_dense_stream(windows, tmp_path, monkeypatch):
    """x̄ computed over 2 threads adds in another order than over 1: a run at 1 thread computes its own."""
    from reconlib import streams
    from reconlib.models import tiny_model

    calib, test = windows
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        reconstruct.prune(tiny_model("llama"), config(recon="br", criterion="wanda"), calib, {"t": test},
                          progress=False, store=tmp_path, model_id="tiny")
        torch.set_num_threads(1)
        saved = []
        monkeypatch.setattr(streams.Streams, "_save", lambda self, i, x: saved.append(i))
        reconstruct.prune(tiny_model("llama"), config(recon="br", criterion="wanda"), calib, {"t": test},
                          progress=False, store=tmp_path, model_id="tiny")
    finally:
        torch.set_num_threads(before)
    assert sorted(saved) == [1, 1, 2, 2, 3, 3]  # every x̄ of both window sets computed again, none read


@pytest.mark.parametrize("recon, kill_at", [("br+gp+cr", 2), ("br", 1), ("lr", None)])
def test_a_killed_run_resumes_at_its_checkpoint_and_ends_identical(windows, tmp_path, monkeypatch, recon, kill_at):
    """Kill after unit k, run the same call again: the record must equal an uninterrupted run's, bit for bit."""
    from reconlib.models import tiny_model

    calib, test = windows
    cfg = config(recon=recon, criterion="sparsegpt", epochs=2)

    def run(checkpoint):
        model = tiny_model("llama")
        r = reconstruct.prune(model, cfg, calib, {"t": test}, progress=False, checkpoint=checkpoint)
        return r, [p.clone() for p in model.parameters()]

    whole, whole_params = run(None)
    monkeypatch.setattr(checkpoints, "EVERY", 0.0)  # a checkpoint at every unit boundary
    real_train, calls = reconstruct.train, []
    if kill_at is None:  # LR trains nothing: kill in the statistics of block 2 instead
        real_choose = reconstruct.choose_masks

        def killed(block, *a, **k):
            if len(calls) == 2:
                raise KeyboardInterrupt
            calls.append(1)
            return real_choose(block, *a, **k)
        monkeypatch.setattr(reconstruct, "choose_masks", killed)
    else:
        def killed(*a, **k):
            if len(calls) == kill_at:
                raise KeyboardInterrupt
            calls.append(1)
            return real_train(*a, **k)
        monkeypatch.setattr(reconstruct, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "state.pt").is_file()
    monkeypatch.undo()
    monkeypatch.setattr(checkpoints, "EVERY", 0.0)
    name = "choose_masks" if kill_at is None else "train"
    real, again = getattr(reconstruct, name), []
    monkeypatch.setattr(reconstruct, name, lambda *a, **k: again.append(1) or real(*a, **k))
    resumed, resumed_params = run(tmp_path / "ckpt")
    units = 3 if kill_at is None else len(reconstruct.schedule(recon, 3))
    assert len(again) == units - len(calls)  # it started where the killed run stopped, not from unit 0
    assert resumed.block_error == whole.block_error and resumed.test_block_error == whole.test_block_error
    assert resumed.unit_loss == whole.unit_loss and resumed.sparsity == whole.sparsity
    assert all(torch.equal(resumed.masks[i][n], whole.masks[i][n]) for i in whole.masks for n in whole.masks[i])
    assert all(torch.equal(a, b) for a, b in zip(resumed_params, whole_params))
    # the finished pass stays for a kill in the evaluation after it: the same call again trains nothing
    again.clear()
    finished, finished_params = run(tmp_path / "ckpt")
    assert again == [] and finished.block_error == whole.block_error and finished.sparsity == whole.sparsity
    assert all(torch.equal(a, b) for a, b in zip(finished_params, whole_params))


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_sequential_prunes_each_linear_on_the_inputs_of_the_pruned_ones_before_it(windows, criterion):
    """Independent check: run the finished block once more with hooks; each linear's Wanda mask recomputed from
    what reaches it now (through the pruned linears before it) must be the mask it got. SparseGPT: the output
    handed to the stream is the pruned block's output."""
    from reconlib import criteria
    from reconlib.models import tiny_model

    calib, _ = windows
    model = tiny_model("llama")
    x, kwargs = arch.capture(model, calib, 4)
    block = arch.blocks(model)[0]
    original = {n: layer.weight.clone() for n, layer in arch.linears(block).items()}
    cfg = config(criterion=criterion, sequential=True)
    masks, x_out = reconstruct.choose_masks(block, x, kwargs[0], cfg, torch.device("cpu"))
    stats = criteria.Stats(arch.linears(block), hessian=False)
    with torch.no_grad():
        y = arch.run_block(block, x, kwargs[0])
    stats.flush()
    stats.remove()
    assert torch.allclose(x_out, y, atol=1e-5)
    if criterion == "wanda":
        for name, W in original.items():
            expected = criteria.select(criteria.score("wanda", W, stats.col_sq[name]), 0.5, per_row=True)
            assert torch.equal(masks[name], expected), name
        plain, _ = reconstruct.choose_masks(arch.blocks(tiny_model("llama"))[0], x, kwargs[0],
                                            config(criterion=criterion), torch.device("cpu"))
        assert torch.equal(plain["self_attn.q_proj"], masks["self_attn.q_proj"])  # the first linears see the same input either way
        assert not torch.equal(plain["mlp.down_proj"], masks["mlp.down_proj"])  # the last sees the pruned block


def test_sequential_lr_hands_its_forward_to_the_stream(windows):
    """One forward per block for statistics and output: the error curve is that of the pruned model."""
    from reconlib.models import tiny_model

    calib, _ = windows
    model = tiny_model("llama")
    result = reconstruct.prune(model, config(criterion="wanda", sequential=True), calib, progress=False)
    dense = tiny_model("llama")
    x_sparse, kwargs = arch.capture(model, calib, 4)
    x_dense = x_sparse.clone()
    for i, (b, b_dense) in enumerate(zip(arch.blocks(model), arch.blocks(dense))):
        with torch.no_grad():
            x_sparse, x_dense = arch.run_block(b, x_sparse, kwargs[i]), arch.run_block(b_dense, x_dense, kwargs[i])
        expected = (x_dense - x_sparse).double().pow(2).mean().item()  # method.md §4: (1 / (N·T·d)) ‖x̄ − x‖²
        assert result.block_error[i] == pytest.approx(expected, rel=1e-4)


def test_magnitude_lr_without_data_prunes_the_same_masks_and_runs_nothing(windows, monkeypatch):
    from reconlib import streams
    from reconlib.models import tiny_model

    calib, _ = windows
    with_data = reconstruct.prune(tiny_model("llama"), config(criterion="magnitude"), calib, progress=False)
    monkeypatch.setattr(arch, "run_block", lambda *a, **k: pytest.fail("a forward ran"))
    monkeypatch.setattr(streams, "run", lambda *a, **k: pytest.fail("a forward ran"))
    cfg = config(criterion="magnitude", n_calib=0, test_error="")
    result = reconstruct.prune(tiny_model("llama"), cfg, calib[:0], progress=False)
    assert result.block_error == [] and result.final_error is None
    assert result.sparsity == with_data.sparsity == 0.5
    assert all(torch.equal(result.masks[i][n], with_data.masks[i][n]) for i in result.masks for n in result.masks[i])
