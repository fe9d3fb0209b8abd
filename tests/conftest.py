import os
from pathlib import Path

import pytest
import torch

from reconlib import models

# the shared WikiText-2 / PTB folder beside the repo, unless the caller points elsewhere
os.environ.setdefault("RECONLIB_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

FAMILIES = ["llama", "opt", "gemma3"]


@pytest.fixture(params=FAMILIES)
def tiny(request):
    """(family, tiny random model) for every supported architecture family."""
    return request.param, models.tiny_model(request.param)


@pytest.fixture
def windows():
    """Token windows for tiny models: 8 calibration (8, 32) and 4 test (4, 32)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (8, 32), generator=g), torch.randint(0, 256, (4, 32), generator=g)


@pytest.fixture(scope="session")
def smollm():
    """The real embedded model (converted once to the safetensors cache)."""
    return models.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory):
    """The whole smoke grid computed once, from an empty store, by two workers (make records' path) → (store,
    the runs missing before, the runs computed, the runs missing after). Tests copy the store rather than write
    to it: the grid test resumes and verifies a copy, the notebooks render from one (they computed the same runs
    again, one by one, in 450 of CI's 1,574 s)."""
    from reconlib import grid, parallel

    store = tmp_path_factory.mktemp("smoke-grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECONLIB_RESULTS", str(store))
        before = grid.missing("smoke")
        done = parallel.compute("smoke", workers=2, progress=False)  # two processes, one thread each
        return store, before, done, grid.missing("smoke")


@pytest.fixture(autouse=True)
def _results(tmp_path, monkeypatch):
    monkeypatch.setenv("RECONLIB_RESULTS", str(tmp_path / "results"))


def interrupt_after(fn, n: int, calls: list):
    """fn, but the call after the first n raises KeyboardInterrupt (a kill mid-run); `calls` counts the ones made."""
    def wrapper(*a, **k):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(1)
        return fn(*a, **k)
    return wrapper
