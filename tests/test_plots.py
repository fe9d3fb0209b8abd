"""The book's figures, on frames shaped as the notebooks build them: one per model, stacked by pd.concat."""
import matplotlib
import pandas as pd
import pytest

from reconlib import plots

matplotlib.use("Agg")
MODELS = ["model-a", "model-b"]


@pytest.fixture
def runs():
    """Each model's rows indexed from 0, as findings' tables are: the stacked frame repeats index labels.
    The second model has one seed, as Gemma 3 has in the book."""
    rows = [dict(model=m, seed=s, criterion=c, recon=r, final_error=10.0 / (1 + i) + s, epochs=e,
                 test_error_wikitext2=5.0 + s + e, ppl_wikitext2=30.0 - e)
            for m, seeds in zip(MODELS, [(0, 1, 2), (0,)]) for s in seeds for c in ("wanda", "sparsegpt")
            for i, r in enumerate(plots.SCHEME_ORDER) for e in (1, 2)]
    return pd.concat([pd.DataFrame([r for r in rows if r["model"] == m]) for m in MODELS])


def test_every_figure_draws_a_panel_per_model_from_a_stacked_frame(runs):
    assert not runs.index.is_unique  # the case that broke the book's first two-model build
    fig = plots.final_error_bars(runs)
    assert len(fig.axes) == len(MODELS)
    curves = pd.concat([runs.assign(block=b, error=runs.final_error * (b + 1)) for b in range(3)])
    assert len(plots.block_error_curves(curves).axes) == len(MODELS) * 2  # a row per model, a column per criterion
    metrics = ["test_error_wikitext2", "ppl_wikitext2"]
    fig = plots.paired_change(runs[runs.epochs == 2], "recon", "br", "br+gp+cr", metrics)
    assert len(fig.axes) == 2 * len(metrics)
    assert fig.axes[0].get_title() == "model-a · test err. WT2"  # the tables' short heads, not column names
    sweep = runs[(runs.criterion == "sparsegpt") & (runs.recon == "br+gp+cr")]
    assert len(plots.metric_vs(sweep, "epochs", metrics).axes) == 2 * len(metrics)


def test_the_pages_tables_state_mean_sd_and_n_per_model(runs):
    """findings.spread: mean ± sample sd over seeds and the seed count, one row per (model, recon)."""
    from reconlib import findings

    d = runs[(runs.criterion == "wanda") & (runs.epochs == 1)]
    out = findings.spread(d, ["model", "recon"], ["final_error", "ppl_wikitext2"])
    assert list(out.columns) == ["n", "final error", "ppl WT2"]
    a = d[(d.model == "model-a") & (d.recon == "br")].final_error  # seeds 0, 1, 2: 5, 6, 7
    assert out.loc[("model-a", "br"), "n"] == 3
    assert out.loc[("model-a", "br"), "final error"] == f"{a.mean():.3g} ± {a.std(ddof=1):.2g}" == "6 ± 1"
    assert out.loc[("model-b", "br"), "n"] == 1
    assert out.loc[("model-b", "br"), "final error"] == "5"  # one seed: no spread to state
