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
