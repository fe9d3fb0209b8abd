"""The evidence grid (reconlib.grid), the findings' parts read from it, and the record store's checks."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from reconlib import findings, grid, parallel, pipeline, records, verify


def synthetic(recon_errors: dict[str, list[float]], criterion="sparsegpt", **columns):
    """Records-like rows: one per scheme and seed."""
    rows = []
    for recon, errors in recon_errors.items():
        for seed, e in enumerate(errors):
            rows.append({"model": "m", "criterion": criterion, "recon": recon, "seed": seed, "final_error": e,
                         **{k: v[recon][seed] for k, v in columns.items()}})
    return pd.DataFrame(rows)


def test_error_reduction_verdict_reads_each_step_per_seed():
    df = synthetic({"lr": [10, 11, 12], "br": [5, 6, 5], "br+gp": [3, 3.5, 3.2], "br+gp+cr": [2, 2.5, 2.1]})
    v = findings.verdict_error_reduction(df)
    assert v["verdict"] == "holds" and list(v["parts"].verdict) == ["holds"] * 3
    # the step's change per seed, in % of its start: LR → BR is -50, -45.45, -58.33
    part = v["tests"]["sparsegpt final error, LR → BR"]
    assert part.changes == pytest.approx([-50.0, -100 * 5 / 11, -100 * 7 / 12])
    noisy = synthetic({"lr": [10, 11, 12], "br": [5, 6, 5], "br+gp": [3, 3.5, 3.2], "br+gp+cr": [2, 3.6, 3.0]})
    v = findings.verdict_error_reduction(noisy)  # CR helps on two seeds, hurts on one
    assert v["verdict"] == "not separable from seed noise"
    assert v["words"]["sparsegpt final error, BR+GP → BR+GP+CR"] == "not separable from seed noise"


def test_overfitting_verdict_wants_calibration_down_and_test_up_and_reads_the_regime():
    df = synthetic({"br+gp": [3.0, 3.1, 3.2], "br+gp+cr": [2.0, 2.1, 2.2]},
                   test_error_wikitext2={"br+gp": [10, 11, 12], "br+gp+cr": [11, 12, 13.5]},
                   ppl_wikitext2={"br+gp": [30, 31, 32], "br+gp+cr": [31, 32, 33.2]})
    v = findings.verdict_overfitting(df)
    assert v["verdict"] == "holds" and v["matches"].startswith("LLaMA-7B")
    assert list(v["regime"].ours) == ["↓", "↑", "↑"] and list(v["regime"]["OPT-125M"]) == ["↓", "↓", "↓"]
    better = df.assign(test_error_wikitext2=[10, 11, 12, 9, 10, 11.1],  # CR lowers test error and perplexity
                       ppl_wikitext2=[30, 31, 32, 29, 30, 30.8])
    v = findings.verdict_overfitting(better)
    assert v["verdict"] == "does not hold" and v["matches"].startswith("OPT-125M")
    assert v["words"]["WikiText-2 test error, BR+GP → BR+GP+CR"] == "does not hold"
    mixed = df.assign(ppl_wikitext2=[30, 31, 32, 29, 30, 30.8])  # test error up, perplexity down: neither
    assert findings.verdict_overfitting(mixed)["matches"] == "neither"


def test_self_generated_verdicts_compare_with_each_control():
    rows = []
    for variant, wt2 in {"real": [10, 11, 12], "generated": [9, 10, 11.2], "steps": [9.5, 10.4, 11.6],
                         "more real": [8, 9, 10]}.items():
        rows += [{"model": "m", "seed": s, "variant": variant, "self_gen": 4 * (variant == "generated"),
                  "final_error": 1.0, "test_error_wikitext2": e} for s, e in enumerate(wt2)]
    df = pd.DataFrame(rows)
    assert findings.verdict_self_generated(df, "real")["verdict"] == "holds"
    assert findings.verdict_self_generated(df, "steps")["verdict"] == "holds"
    assert findings.verdict_self_generated(df, "more real")["verdict"] == "does not hold"  # real text beats it


def test_the_smoke_grid_is_computed_resumed_and_verified(smoke_grid):
    store, before, done, after = smoke_grid
    assert len(before) == len(grid.runs("smoke")) + len(grid.dense_runs("smoke")) == len(done) and after == []
    shutil.copytree(store, records.results_dir(), dirs_exist_ok=True)  # copy2: the files keep their times
    assert grid.missing("smoke") == []
    victim = records.path(grid.cell("smoke", seed=1, criterion="wanda", recon="br"))
    kept = {f: f.stat().st_mtime_ns for f in records.results_dir().glob("*.json") if f != victim}
    victim.unlink()
    assert [c.key() for _, c in grid.missing("smoke")] == [victim.stem]
    parallel.compute("smoke", workers=1, progress=False)
    assert victim.is_file()  # recomputed, and nothing else rewritten
    assert {f: f.stat().st_mtime_ns for f in kept} == kept

    rows = verify.verify(sample=2, profile="smoke")
    assert len(rows) == 2 and all(r["case"] == "same kernels" and r["worst"] <= verify.SAME_KERNELS for r in rows)
    assert all(r["flipped"] == [] for r in rows)  # read by the smoke findings, whose verdicts it left alone
    verified = {r["record"] for r in rows}
    others = [json.loads(f.read_text())["seconds"]["total"] for f in records.results_dir().glob("*.json")
              if not f.name.startswith("dense-") and f.name not in verified]
    assert max(r["stored_seconds"] for r in rows) <= min(others)  # the cheapest ones

    # a number changed by hand: the record's digest no longer matches, and verify names it
    record = json.loads(victim.read_text())
    record["final_error"] *= 1.01
    victim.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"record {victim.name} was changed after it was written"):
        verify.verify(sample=0, profile="smoke")


def test_verify_names_a_record_that_does_not_reproduce(monkeypatch):
    config = grid.cell("smoke", criterion="magnitude", recon="lr")
    records.run(config, progress=False)
    file = records.path(config)
    record = json.loads(file.read_text())
    record["block_error"][1] *= 1.5
    file.write_text(json.dumps(records.seal({k: v for k, v in record.items() if k != "digest"})))  # a valid digest
    with pytest.raises(ValueError, match=f"record {file.name} does not reproduce \\(same kernels\\).*block_error\\[1\\]"):
        verify.verify(sample=1, profile="smoke")


def _stat(pid) -> list[str]:
    """A process's /proc stat fields after its name (state, parent, ...); [] once it has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _children(pid: int) -> set[int]:
    """Processes whose parent is `pid`, from /proc (Linux)."""
    return {int(p.name) for p in Path("/proc").glob("[0-9]*") if _stat(p.name)[1:2] == [str(pid)]}


def _alive(pid: int) -> bool:
    """Running, not a zombie that nobody reaped yet."""
    return _stat(pid)[:1] not in ([], ["Z"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table from /proc")
def test_a_killed_grid_leaves_no_worker_computing():
    """`kill` of `make records` ends its pool workers too: their records would have nobody to write them."""
    driver = subprocess.Popen([sys.executable, "-m", "reconlib", "grid", "--profile", "smoke", "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(driver.pid)) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.poll() is None and len(workers) >= 2, "the grid never started its two workers"
        driver.send_signal(signal.SIGTERM)
        driver.wait(30)
        deadline = time.monotonic() + 30
        while (left := {w for w in workers if _alive(w)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"workers {sorted(left)} outlived their driver"
    finally:
        driver.kill()


@pytest.mark.skipif(not shutil.which("flock") or not shutil.which("make"), reason="needs make and util-linux flock")
def test_a_second_grid_at_a_commit_without_claims_is_refused(tmp_path):
    """Grids at a commit before claims.py share no queue, so `make records REV=…` lets one run there: a second is
    refused by name while the first holds .grid/REV.lock, and one at a commit with claims.py is not."""
    shutil.copy(Path(__file__).resolve().parents[1] / "Makefile", tmp_path / "Makefile")
    bin_ = tmp_path / "venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text("#!/bin/sh\nsleep 3\n")  # stands in for the grid: it holds the lock 3 s
    (bin_ / "python").chmod(0o755)
    for rev in ("old", "new"):
        (tmp_path / ".grid" / rev / "reconlib").mkdir(parents=True)
    (tmp_path / ".grid" / "new" / "reconlib" / "claims.py").touch()
    make = lambda rev: subprocess.Popen(["make", "-s", "records", f"REV={rev}", f"VENV={tmp_path / 'venv'}", "STAMP="],  # noqa: E731
                                        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for rev in ("old", "new"):
        first = make(rev)
        time.sleep(1)
        second = make(rev)
        _, err = second.communicate(30)
        assert first.wait(30) == 0
        if rev == "old":
            assert second.returncode != 0 and "predates claims.py" in err and "higher WORKERS" in err
        else:
            assert second.returncode == 0, err


def test_the_grid_runs_on_a_two_worker_ray_cluster(capsys, monkeypatch):
    """`grid --executor ray`: runs dispatched to a local Ray cluster of two CPUs; the driver writes the records."""
    from reconlib.__main__ import main

    runs = grid.runs("smoke")[:3]  # a small grid: starting Ray and its workers is most of the cost
    monkeypatch.setattr(grid, "runs", lambda profile: runs)
    monkeypatch.setattr(grid, "dense_runs", lambda profile: [])
    todo = grid.missing("smoke")
    assert len(todo) == 3
    assert main(["grid", "--profile", "smoke", "--executor", "ray", "--workers", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == len(todo)
    assert grid.missing("smoke") == []
    assert all(not records.unsealed(json.loads(f.read_text())) for f in records.results_dir().glob("*.json"))


def test_the_papers_block_weights_are_what_those_architectures_hold():
    """paper.BLOCK_WEIGHTS, counted on blocks built with LLaMA-7B's and OPT-125M's shapes (meta tensors)."""
    import torch
    from transformers import LlamaConfig, OPTConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.opt.modeling_opt import OPTDecoderLayer

    from reconlib import arch, paper

    with torch.device("meta"):
        llama = LlamaDecoderLayer(LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32), 0)
        opt = OPTDecoderLayer(OPTConfig(hidden_size=768, ffn_dim=3072, num_attention_heads=12))
    for name, block in (("llama-7b", llama), ("opt-125m", opt)):
        assert sum(m.weight.numel() for m in arch.linears(block).values()) == paper.BLOCK_WEIGHTS[name]


def test_each_models_adam_lr_lowers_its_own_loss_in_the_committed_store():
    """The rule behind GRIDS["cpu"].lr (book/evidence.md): Wanda BR starts from Wanda LR's weights and masks on
    block 0's dense input, so its block-0 error must end below LR's. Gemma 3 at lr 1e-3 ended at 2.4× it."""
    store = Path(__file__).parents[1] / "book" / "records"
    checked = 0
    for model in grid.grid("cpu").models:
        for seed in grid.seeds("cpu", model):
            cells = (grid.cell("cpu", model, seed, criterion="wanda", recon=r) for r in ("lr", "br"))
            lr_run, br_run = (records.read(store / f"{c.key()}.json") for c in cells)
            if lr_run and br_run:  # the store may still be computing a run
                assert br_run["config"]["lr"] == grid.lr("cpu", model)
                assert br_run["block_error"][0] < lr_run["block_error"][0], (model, seed)
                checked += 1
    assert checked >= 3, "the committed store lacks SmolLM2's Wanda LR / BR records"


def test_a_models_own_lr_reaches_its_adam_runs_and_leaves_lr_runs_keys_alone():
    gemma, profile_lr = "gemma3-270m", grid.base("cpu").lr
    assert grid.lr("cpu", gemma) != profile_lr == grid.lr("cpu", "smollm2-135m")
    runs = [c for c in grid.runs("cpu") if c.model == gemma]
    assert {c.lr for c in runs if c.recon != "lr"} == {grid.lr("cpu", gemma)}
    assert {c.lr for c in runs if c.recon == "lr"} == {profile_lr}  # LR trains nothing: its stored keys stay


def test_the_book_reads_the_store_as_it_is_and_computes_nothing(monkeypatch):
    """RECONLIB_COMPUTE=0 (make book): a run missing from the store is left out, never computed."""
    configs = grid.error_reduction_cells("smoke", "tiny-llama")[:2]
    records.run(configs[0], progress=False)
    monkeypatch.setenv("RECONLIB_COMPUTE", "0")
    monkeypatch.setattr(pipeline, "compute", lambda *a, **k: pytest.fail("a missing run was computed"))
    df = findings.table(configs, "smoke")
    assert list(df.seed) == [configs[0].seed] and list(df.recon) == [configs[0].recon]
    monkeypatch.delenv("RECONLIB_COMPUTE")
    with pytest.raises(pytest.fail.Exception, match="a missing run was computed"):
        findings.table(configs, "smoke")


def test_the_clis_tables_read_the_store_and_compute_nothing_unless_asked(monkeypatch, capsys):
    """`summary` on an empty store prints what is there (nothing) in seconds, rather than hours of runs; the
    intro table's dense record and runs too. RECONLIB_COMPUTE=1 still computes, and the variable is left as it was."""
    from reconlib.__main__ import main

    monkeypatch.delenv("RECONLIB_COMPUTE", raising=False)
    for step in ("compute", "compute_dense"):
        monkeypatch.setattr(pipeline, step, lambda *a, **k: pytest.fail("a table computed a run"))
    main(["summary", "--profile", "smoke"])
    assert "runs of the grid are not in the store yet" in capsys.readouterr().out
    assert "RECONLIB_COMPUTE" not in os.environ
    monkeypatch.setenv("RECONLIB_COMPUTE", "1")
    with pytest.raises(pytest.fail.Exception, match="a table computed a run"):
        main(["summary", "--profile", "smoke"])
    assert os.environ["RECONLIB_COMPUTE"] == "1"


def test_the_dry_run_counts_the_papers_findings_apart_from_finding_4(capsys):
    from reconlib.__main__ import main
    paper = grid.paper_runs("smoke")
    assert paper and not any(c.holdout or c.early_stop for c in paper)  # finding 4's own fields stay out
    main(["grid", "--profile", "smoke", "--dry-run", "--json"])
    out = json.loads(capsys.readouterr().out)
    first = len(paper) + len(grid.dense_runs("smoke"))
    baselines = sum(map(len, grid.baseline_cells("smoke").values()))
    ladder = len(grid.ladder_cells("smoke", "tiny-llama"))
    assert baselines == 2 * (4 + 8) and ladder == 2 * 2 * 2  # the smoke grid's: its 2 seeds, 2 ladder points
    assert out["missing_by_finding"] == {"dense and findings 1-3": first, "baselines (exact LR, ADMM, OWL)": baselines,
                                         "calibration ladder": ladder,
                                         "finding 4": len(grid.runs("smoke")) - len(paper) - baselines - ladder}
    assert out["missing"] == len(grid.missing("smoke")) > first


def test_the_dry_run_prints_one_missing_run_a_line_for_a_person(capsys):
    from reconlib.__main__ import main
    main(["grid", "--profile", "smoke", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    todo = grid.missing("smoke")
    runs = lines[lines.index("runs:") + 1:]
    assert runs == [f"  {i}. {grid.label(kind, c)}" for i, (kind, c) in enumerate(todo, 1)]
    assert f"missing: {len(todo)}" in lines and "  calibration ladder: 8" in lines  # a mapping, a key a line


def test_issue_39s_rows_are_a_group_of_their_own():
    rows = grid.baseline_cells("cpu")
    queued = [c.key() for c in grid.runs("cpu")]
    mine = [c.key() for cells in rows.values() for c in cells]
    assert set(mine) <= set(queued) and min(map(queued.index, mine)) > max(  # queued after the findings' runs
        queued.index(c.key()) for c in grid.paper_runs("cpu"))
    assert not any(grid.baseline_cells("paper").values())  # a grid without baselines leaves them out
    exact, owl = rows["exact lr"], rows["owl"]
    # finding 1's seeds: 5 × (magnitude, Wanda, SparseGPT, ADMM) on both models
    assert len(exact) == 20 + 20 and sum(c.criterion == "admm" for c in exact) == 10
    assert all(c.refit != (c.criterion == "admm") and c.recon == "lr" for c in exact)
    assert len(owl) == 8 * (5 + 3) and {c.sparsity for c in owl} == {"0.7"}
    assert sum(c.allocation == "owl" for c in owl) == len(owl) // 2
    # no page reads their zero-shot, though finding 1's first seed carries it on the same rows
    assert any(c.zeroshot for c in grid.error_reduction_cells("cpu", "smollm2-135m"))
    assert not any(c.zeroshot or c.zeroshot_limit for c in exact + owl)


def test_only_keeps_a_grid_to_its_groups_and_a_group_it_does_not_know_is_refused_by_name(capsys):
    from reconlib.__main__ import main
    ladder = {c.key() for c in grid.ladder_cells("smoke", "tiny-llama")}
    baselines = {c.key() for cells in grid.baseline_cells("smoke").values() for c in cells}
    assert {c.key() for _, c in grid.missing("smoke", ("ladder",))} == ladder
    both = grid.missing("smoke", ("baselines", "ladder"))
    assert {kind for kind, _ in both} == {"run"} and {c.key() for _, c in both} == ladder | baselines
    paper = grid.missing("smoke", ("paper",))  # the dense evaluations count with the paper's findings
    assert {kind for kind, _ in paper} == {"dense", "run"} and not {c.key() for _, c in paper} & (ladder | baselines)
    assert len(grid.missing("smoke", tuple(grid.GROUPS))) == len(grid.missing("smoke"))
    main(["grid", "--profile", "smoke", "--dry-run", "--json", "--only", "ladder"])
    out = json.loads(capsys.readouterr().out)
    assert out["missing_by_finding"] == {"calibration ladder": len(ladder)} and out["missing"] == len(ladder)
    with pytest.raises(ValueError, match="no group ladders in the grid: choose among paper, baselines, ladder"):
        grid.missing("smoke", ("ladders",))
