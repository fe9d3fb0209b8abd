import pandas as pd

from reconlib import findings
from reconlib.config import profile


def fake_error_reduction(errors: dict[str, list[float]]):
    rows = [{"criterion": c, "recon": s, "final_error": e}
            for c, es in errors.items() for s, e in zip(("lr", "br", "br+gp", "br+gp+cr"), es)]
    df = pd.DataFrame(rows)
    lr = df[df.recon == "lr"].set_index("criterion").final_error
    df["reduction_vs_lr_%"] = 100 * (1 - df.final_error / df.criterion.map(lr))
    return lambda base: df


def test_error_reduction_verdict_names_the_step_that_does_not_lower_the_error(monkeypatch):
    monkeypatch.setattr(findings, "error_reduction", fake_error_reduction(
        {"magnitude": [1267.0, 1478.0, 772.0, 541.0], "wanda": [419.0, 183.0, 112.0, 76.0]}))
    verdict = findings.verdict_error_reduction(profile("smoke"))
    assert verdict["holds"] == "partly holds"
    assert "magnitude: BR 1478 ≥ LR 1267" in verdict["ours"]
    assert "wanda 82%" in verdict["ours"] and "wanda:" not in verdict["ours"]


def test_error_reduction_verdict_holds_only_when_every_step_lowers_it(monkeypatch):
    monkeypatch.setattr(findings, "error_reduction", fake_error_reduction({"wanda": [4.0, 3.0, 2.0, 1.0]}))
    assert findings.verdict_error_reduction(profile("smoke"))["holds"] == "holds"
    monkeypatch.setattr(findings, "error_reduction", fake_error_reduction({"wanda": [4.0, 5.0, 6.0, 7.0]}))
    verdict = findings.verdict_error_reduction(profile("smoke"))
    assert verdict["holds"] == "does not hold" and "-75%" in verdict["ours"]


def test_self_generated_verdict_is_partly_when_one_set_gets_worse(monkeypatch):
    rows = pd.DataFrame([{"self_gen": 0, "final_error": 56.0, "test_error_wikitext2": 219.0, "test_error_ptb": 259.0,
                          "ppl_wikitext2": 107.0, "ppl_ptb": 322.6},
                         {"self_gen": 16, "final_error": 61.0, "test_error_wikitext2": 206.0, "test_error_ptb": 244.0,
                          "ppl_wikitext2": 102.6, "ppl_ptb": 334.0}])
    monkeypatch.setattr(findings, "sweep", lambda base, field, values: rows)
    verdict = findings.verdict_self_generated(profile("smoke"), 16)
    assert verdict["holds"] == "partly holds"
    assert "ppl ptb 322.60→334.00" in verdict["ours"] and "test wikitext2 219→206" in verdict["ours"]
    better = rows.assign(ppl_ptb=[322.6, 300.0])
    monkeypatch.setattr(findings, "sweep", lambda base, field, values: better)
    assert findings.verdict_self_generated(profile("smoke"), 16)["holds"] == "holds"
