"""The house's layering, read from the imports: a module imports only modules of lower layers, wherever the import
statement sits (module level or inside a function), except for the calls upward listed, with their reason."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "reconlib"
LAYERS = [
    {"arch", "atomic", "claims", "clock", "config", "criteria", "evaluate", "memory", "models", "paper", "refit",
     "sparsegpt", "stats"},
    {"admm", "data", "moe", "selfgen", "streams", "zeroshot"},
    {"guard", "lazy", "owl", "provenance", "training"},
    {"checkpoints"},
    {"reconstruct"},
    {"pipeline"},
    {"records"},
    {"grid"},
    {"findings"},
    {"baselines", "ladder", "stopping"},
    {"verify"},
    {"robust"},
    {"parallel", "plots", "report"},
    {"__init__", "__main__"},
]
UPWARD = {
    ("config", "data"): "validating a config reads whether a local corpus exists, and its digest for the key",
    ("arch", "moe"): "a block's matrices include each fused expert's, which moe.py finds and views",
    ("records", "verify"): "a record recomputed to save its model is judged against the stored one before it is dropped",
}


def imports(module: str) -> set[str]:
    """The reconlib modules `module` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reconlib."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "reconlib":
            found |= {a.name for a in node.names}
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    placed = set().union(*LAYERS)
    assert modules == placed, f"unplaced: {sorted(modules - placed)}; gone: {sorted(placed - modules)}"


def test_no_module_imports_upward():
    layer = {m: i for i, ms in enumerate(LAYERS) for m in ms}
    upward = [(m, dep) for m in layer for dep in imports(m)
              if dep in layer and layer[dep] >= layer[m] and (m, dep) not in UPWARD]
    assert not upward, f"imports at or above their own layer: {upward}"
    assert all(layer[dep] > layer[m] and dep in imports(m) for m, dep in UPWARD), "an allowed call upward is gone"
