"""Mixed precision on the CPU: the GPU path's autocast, exercised where CI runs. `dtype` picks the autocast
dtype on any device; float16 trains with loss scaling; float32 means no autocast."""
import pytest
import torch

from reconlib import arch, criteria, models, pipeline, reconstruct
from reconlib.config import profile

SMOKE = dict(recon="br+gp+cr", criterion="sparsegpt")


@pytest.fixture(scope="module")
def fp32():
    return pipeline.compute(profile("smoke", **SMOKE, dtype="float32"), progress=False, resumable=False)


def test_auto_is_fp32_on_a_cpu_and_float32_means_no_autocast():
    cpu = torch.device("cpu")
    for dtype in ("auto", "float32"):
        assert profile("smoke", dtype=dtype).placement == (cpu, None)
    assert profile("smoke", dtype="bfloat16").placement[1] == torch.bfloat16
    assert profile("smoke", dtype="float16").placement[1] == torch.float16
    # auto keeps every record's key: the field is absent from no key, and its default is the same
    assert profile("smoke").key() == profile("smoke", dtype="auto").key() != profile("smoke", dtype="float32").key()


@pytest.mark.parametrize("dtype, tolerance", [("bfloat16", 1e-2), ("float16", 1e-3)])
def test_mixed_precision_runs_end_to_end_close_to_fp32_but_not_equal(fp32, dtype, tolerance, monkeypatch):
    seen = set()
    real = torch.nn.Linear.forward

    def watch(self, x):  # what the blocks' matmuls compute in (the residual stream itself stays fp32)
        out = real(self, x)
        seen.add(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", watch)
    record = pipeline.compute(profile("smoke", **SMOKE, dtype=dtype), progress=False, resumable=False)
    assert getattr(torch, dtype) in seen  # autocast really ran
    assert record["sparsity"] == fp32["sparsity"] and record["layer_sparsity"] == fp32["layer_sparsity"]
    # measured on the smoke model: bf16 moves the final error by 0.14%, fp16 by 0.007%
    assert record["final_error"] == pytest.approx(fp32["final_error"], rel=tolerance)
    assert record["final_error"] != fp32["final_error"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_parameters_stay_fp32_and_statistics_accumulate_in_fp32(dtype):
    model = models.tiny_model("llama")
    block = arch.blocks(model)[0]
    x, kwargs = arch.capture(model, torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0)), 4)
    layers = arch.linears(block)
    stats = criteria.Stats(layers, hessian=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=getattr(torch, dtype)):
        arch.run_block(block, x, kwargs[0])
    inputs = dict(stats._inputs)
    stats.flush()
    name = "mlp.down_proj"  # its input, gate × up, is computed in the autocast dtype
    assert inputs[name].dtype == getattr(torch, dtype)
    X = inputs[name].reshape(-1, inputs[name].shape[-1]).double()
    assert stats.XtX[name].dtype == torch.float32 and stats.col_sq[name].dtype == torch.float32
    # an fp32 sum of these inputs: ~1e-6 relative; a sum in the autocast dtype would be ~1e-2 off
    assert torch.allclose(stats.XtX[name].double(), X.T @ X, rtol=1e-5, atol=1e-5 * (X.T @ X).abs().max())
    assert all(p.dtype == torch.float32 for p in block.parameters())


def test_fp16_never_steps_on_gradients_that_underflowed(monkeypatch):
    """The target sits 1e-5 from the block's own output: fp32's gradients are ~1e-9, below fp16's smallest
    number, so without loss scaling fp16 steps on all-zero gradients. Every fp16 step must see non-zero ones."""
    steps = []
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        steps.append(any(p.grad is not None and p.grad.abs().max() > 0 for g in self.param_groups for p in g["params"]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    for dtype in ("float32", "float16"):
        steps.clear()
        model = models.tiny_model("llama")  # the same block each time, untrained
        block = arch.blocks(model)[0]
        x, kwargs = arch.capture(model, torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0)), 4)
        with torch.no_grad():
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            target = arch.run_block(block, x, kwargs[0]) + 1e-5 * noise
        masks = [{name: torch.ones_like(layer.weight, dtype=torch.bool) for name, layer in arch.linears(block).items()}]
        config = profile("smoke", recon="br", dtype=dtype, epochs=2, batch_size=2)
        _, amp = config.placement
        reconstruct.train([block], masks, x, target, [kwargs[0]], config, torch.device("cpu"), amp, seed=0)
        assert steps and all(steps), f"{dtype}: {steps.count(False)} of {len(steps)} steps on all-zero gradients"
