"""The book's configuration, checked without building it: the toc points at pages that exist or that
`make book` writes, nothing executes at build time, MathJax is local, nothing loads from a CDN."""
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CONFIG = yaml.safe_load((BOOK / "_config.yml").read_text())
TOC = yaml.safe_load((BOOK / "_toc.yml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()
PARTS = {"Orientation": ["notation", "evidence"],
         "Findings": ["_executed/01_error_reduction", "_executed/02_overfitting_tradeoff",
                      "_executed/03_self_generated_calibration", "_executed/04_early_stopping"],
         "Using reconlib": ["_executed/00_quickstart", "api"],
         "Provenance": ["provenance", "cost", "reproducibility", "audit"]}


def toc_files():
    return [TOC["root"]] + [c["file"] for p in TOC["parts"] for c in p["chapters"]]


def test_toc_has_the_four_parts_in_order():
    assert TOC["format"] == "jb-book" and TOC["root"] == "intro"
    assert {p["caption"]: [c["file"] for c in p["chapters"]] for p in TOC["parts"]} == PARTS
    assert [p["caption"] for p in TOC["parts"]] == list(PARTS)


@pytest.mark.parametrize("file", [f for f in toc_files() if not f.startswith("_executed/")])
def test_toc_pages_exist(file):
    assert (BOOK / f"{file}.md").is_file(), f"_toc.yml names {file}, but book/{file}.md does not exist"


def test_executed_pages_come_from_notebooks():
    """Each _executed/ page is papermill's output of notebooks/<same name>.ipynb, and no notebook is left out."""
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert notebooks, "notebooks/ holds no notebook"
    executed = {f.split("/", 1)[1] for f in toc_files() if f.startswith("_executed/")}
    assert executed == notebooks


def test_includes_are_the_tables_make_writes():
    for page in BOOK.glob("*.md"):
        for target in re.findall(r"```\{include\}\s+(\S+)", page.read_text()):
            assert target.startswith("_executed/"), f"{page.name} includes {target}, which no build step writes"
            assert f"--out $(EXECUTED)/{target.split('/', 1)[1]}" in MAKEFILE, f"make book does not write {target}"


def test_nothing_executes_at_build_time():
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert CONFIG["only_build_toc_files"] is True


def test_mathjax_is_served_from_the_book():
    sphinx = CONFIG["sphinx"]["config"]
    assert "://" not in sphinx["mathjax_path"]
    # a relative mathjax_path is resolved inside _static/, which is filled from html_static_path
    (static,) = sphinx["html_static_path"]
    fetched = re.search(r"^MATHJAX_JS := (\S+)$", MAKEFILE, re.M).group(1)
    assert fetched == f"book/{static}/{sphinx['mathjax_path']}"


def test_no_js_under_static():
    # jupyter-book adds every .js under book/_static to every page: vendored code must stay out of it
    assert not list((BOOK / "_static").rglob("*.js"))


def test_nothing_loads_from_a_cdn():
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["nb_ipywidgets_js"] == {}  # else myst-nb loads require.js from cdnjs for tqdm widgets
    assert "sphinx_thebe" not in sphinx["extensions"]
    assert not any(CONFIG["html"]["analytics"].values())
    assert not any(v for k, v in CONFIG["launch_buttons"].items() if k != "notebook_interface")
    assert not any(CONFIG["html"][k] for k in ("use_edit_page_button", "use_repository_button", "use_issues_button"))


def test_short_myst_extension_list():
    assert set(CONFIG["parse"]["myst_enable_extensions"]) <= {"dollarmath", "colon_fence", "amsmath", "deflist"}


def test_api_map_lists_every_module():
    listed = set(re.findall(r"^\| `(\w+)` \|", (BOOK / "api.md").read_text(), re.M))
    modules = {p.stem for p in (ROOT / "reconlib").glob("*.py") if not p.stem.startswith("_")}
    assert modules <= listed, f"book/api.md does not mention {sorted(modules - listed)}"


def test_check_pages_finds_the_findings_chapters():
    spec = importlib.util.spec_from_file_location("check_pages", BOOK / "check_pages.py")
    check_pages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_pages)  # playwright is imported only when a browser is needed
    assert check_pages.findings_pages(BOOK / "_toc.yml") == {f"{f}.html" for f in PARTS["Findings"]}
