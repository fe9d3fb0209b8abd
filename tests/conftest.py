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
