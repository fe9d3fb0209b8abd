"""Every notebook runs in the smoke profile; notebooks stay thin; parameters are RunConfig fields."""
import ast
import json
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
                                           "03_self_generated_calibration"]


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_parameterized(nb_path):
    cells = code_cells(nb_path)
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and cells[0] is params[0], "the first code cell is the one tagged parameters"
    names = {t.id for node in ast.parse("".join(params[0]["source"])).body for t in node.targets}
    assert "profile" in names and names <= set(field_names()) | {"profile"}
    assert len(cells) <= 12
    lengths = sorted(len("".join(c["source"]).splitlines()) for c in cells)
    assert lengths[len(lengths) // 2] <= 7
    for c in cells:
        for node in ast.walk(ast.parse("".join(c["source"]))):
            assert not isinstance(node, FORBIDDEN), f"{type(node).__name__} in a notebook: it belongs in reconlib"
        assert not c.get("outputs"), "notebooks are committed without outputs"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_the_smoke_profile(nb_path, tmp_path):
    import papermill as pm

    out = tmp_path / nb_path.name
    pm.execute_notebook(str(nb_path), str(out), parameters={"profile": "smoke"}, cwd=str(tmp_path),
                        kernel_name="python3", progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_unknown_parameter_is_refused(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="unknown notebook parameter"):
        pm.execute_notebook(str(NOTEBOOKS[1]), str(tmp_path / "out.ipynb"),
                            parameters={"profile": "smoke", "sparsty": 0.5}, cwd=str(tmp_path),
                            kernel_name="python3", progress_bar=False)
