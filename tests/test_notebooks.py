"""Every notebook runs in the smoke profile; notebooks stay thin; every parameter is honoured or refused."""
import ast
import json
import shutil
from pathlib import Path

import pytest

from reconlib.config import field_names

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
FORBIDDEN = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.While, ast.For)


def code_cells(nb_path):
    nb = json.loads(nb_path.read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_four_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["00_quickstart", "01_error_reduction", "02_overfitting_tradeoff",
                                           "03_self_generated_calibration", "04_early_stopping"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_parameterized(nb_path):
    cells = code_cells(nb_path)
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and cells[0] is params[0], "the first code cell is the one tagged parameters"
    names = {t.id for node in ast.parse("".join(params[0]["source"])).body for t in node.targets}
    assert "profile" in names and names <= set(field_names()) | {"profile", "models", "seeds"}
    assert len(cells) <= 12
    lengths = sorted(len("".join(c["source"]).splitlines()) for c in cells)
    assert lengths[len(lengths) // 2] <= 7
    for c in cells:
        for node in ast.walk(ast.parse("".join(c["source"]))):
            assert not isinstance(node, FORBIDDEN), f"{type(node).__name__} in a notebook: it belongs in reconlib"
        assert not c.get("outputs"), "notebooks are committed without outputs"
    # nbformat 4.5 cells carry ids; one without is a warning now and, by nbformat's notice, an error later
    assert all("id" in c for c in json.loads(nb_path.read_text())["cells"]), "a cell without an id"


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory, smoke_grid):
    """A copy of the computed smoke grid, one store for every notebook, as `make records` leaves the book's: the
    notebooks render it and compute nothing (test_a_finding_runs_on_another_model covers a notebook computing its
    runs)."""
    store = tmp_path_factory.mktemp("smoke-store")
    shutil.copytree(smoke_grid[0], store, dirs_exist_ok=True)
    return store


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_the_smoke_profile(nb_path, tmp_path, smoke_store, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("RECONLIB_RESULTS", str(smoke_store))

    out = tmp_path / nb_path.name
    pm.execute_notebook(str(nb_path), str(out), parameters={"profile": "smoke"}, cwd=str(tmp_path),
                        kernel_name="python3", progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_the_evidence_page_sizes_the_evaluation_from_the_smoke_store(smoke_store, monkeypatch):
    """The robustness tables render from the store the notebooks filled (computing the runs if this runs alone),
    with each part's windows now, the windows its share needs and the whole test set's count."""
    from reconlib import data, grid, models, report

    monkeypatch.setenv("RECONLIB_RESULTS", str(smoke_store))
    monkeypatch.setenv("RECONLIB_COMPUTE", "1")
    md = report.robust_markdown("smoke")
    _, tokenizer = models.load_model("tiny-llama")
    whole = data.window_count("wikitext2", tokenizer, grid.base("smoke").seq_len)  # its perplexity's windows
    rows = [line for line in md.splitlines() if line.startswith("| 2 ") and "WikiText-2 perplexity" in line]
    assert rows and all(line.split("|")[-2].strip() == str(whole) for line in rows), rows


def test_the_smoke_grid_fills_the_baselines_and_the_ladder_so_their_sections_render_with_runs(smoke_store,
                                                                                                 monkeypatch):
    """The smoke grid holds issue 39's and 40's rows, so the notebooks above render those sections with runs in
    them rather than "not measured yet": each criterion's cut against the exact LR, OWL's gain, and CR's change at
    every ladder point on both seeds."""
    from reconlib import baselines, findings, ladder, stats

    monkeypatch.setenv("RECONLIB_RESULTS", str(smoke_store))
    monkeypatch.setenv("RECONLIB_COMPUTE", "1")  # alone, this computes them (seconds)
    exact = baselines.exact_lr("smoke", "tiny-llama", progress=False)
    assert "admm" in set(exact.criterion) and "exact lr" in set(exact.recon)
    cut = baselines.cuts(exact)
    assert cut["verdict"] != stats.NONE and set(cut["table"].criterion) == set(findings.CRITERIA)
    assert baselines.owl_gain(baselines.owl("smoke", "tiny-llama", progress=False))["verdict"] != stats.NONE
    changes = ladder.changes(ladder.table("smoke", "tiny-llama", progress=False))
    assert set(changes.point) == {"4 × 16", "16 × 16", "8 × 32"} and set(changes.n) == {2}


def test_the_set_up_cell_keeps_transformers_bars_off_the_page(monkeypatch):
    """A fresh machine converts the GGUF models on first use; the page that happens on must not show its bars."""
    from transformers.utils import logging

    from reconlib import grid

    monkeypatch.setattr(logging, "_tqdm_active", True)  # restored after the test
    assert logging.is_progress_bar_enabled()
    grid.setup({"profile": "smoke"})
    assert not logging.is_progress_bar_enabled()


def test_unknown_parameter_is_refused(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="unknown notebook parameter"):
        pm.execute_notebook(str(NOTEBOOKS[1]), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "smoke", "sparsty": 0.5}, cwd=str(tmp_path),
                            kernel_name="python3", progress_bar=False)


# a valid value other than the smoke profile's for every RunConfig field
INJECT = {"model": "tiny-opt", "criterion": "wanda", "sparsity": "2:4", "recon": "br", "calib": "wikitext2", "n_calib": 6,
          "seq_len": 16, "self_gen": 2, "extra_real": 2, "epochs": 3, "lr": 5e-4, "batch_size": 1, "seed": 3,
          "ppl": ("wikitext2",), "test_error": ("ptb",), "n_test": 1, "max_eval_windows": 1, "zeroshot": ("rte",),
          "zeroshot_limit": 3, "device": "cpu", "dtype": "float32", "sequential": True, "holdout": 2, "early_stop": True,
          "eval_len": 64, "refit": True, "admm_iters": 30, "admm_prune_iters": 3, "admm_rho": 0.5, "allocation": "owl",
          "owl_m": 3.0, "owl_lambda": 0.05}


# fields that are only valid beside another: injected together
COMPANIONS = {"early_stop": {"holdout": 2}}


def test_every_field_has_an_injected_value():
    assert set(INJECT) == set(field_names())


def read_configs(nb_path, **params) -> list:
    """Run the notebook's parameters and set-up cells with `params` injected → the configs it would read."""
    from reconlib import grid

    cells = code_cells(nb_path)
    setup = next(c for c in cells if "grid.setup(" in "".join(c["source"]))
    namespace = {}
    exec("".join(cells[0]["source"]), namespace)
    namespace.update(profile="smoke", **params)
    exec("".join(setup["source"]), namespace)
    return [namespace["config"]] if "config" in namespace else grid.runs(namespace["profile"])


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.parametrize("field", sorted(INJECT))
def test_an_injected_field_changes_what_the_notebook_reads_or_is_refused(nb_path, field):
    value = INJECT[field]
    try:
        configs = read_configs(nb_path, **{field: value, **COMPANIONS.get(field, {})})
    except ValueError as e:
        assert f"'{field}'" in str(e) and "accepts" in str(e)  # refused, by name, with what it accepts
        return
    assert any(getattr(c, field) == value for c in configs), f"{field}={value!r} did not reach the configs"
    assert [c.key() for c in configs] != [c.key() for c in read_configs(nb_path)]


def test_models_and_seeds_choose_the_grid():
    configs = read_configs(NOTEBOOKS[1], models=["tiny-opt", "tiny-gemma3"], seeds=[4])
    assert {c.model for c in configs} == {"tiny-opt", "tiny-gemma3"} and {c.seed for c in configs} == {4}


def test_a_finding_runs_on_another_model(tmp_path):
    import papermill as pm

    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOKS[1]), str(out), parameters={"profile": "smoke", "model": "tiny-opt", "seeds": [0]},
                        cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    text = out.read_text()
    assert "tiny-opt" in text and "tiny-llama" not in text.split("# Parameters")[-1]


def test_an_unknown_model_is_refused_by_name(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="unknown model 'no-such-model': use one of"):
        pm.execute_notebook(str(NOTEBOOKS[1]), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "smoke", "model": "no-such-model"}, cwd=str(tmp_path),
                            kernel_name="python3", progress_bar=False)
