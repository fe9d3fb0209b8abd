import json
import sys
from pathlib import Path

import pytest

from reconlib import models
from reconlib.__main__ import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def test_eval_prints_json(capsys):
    code, out = run_cli(capsys, "eval", "--model", "tiny-llama", "--ppl", "wikitext2,ptb", "--seq-len", "32",
                        "--max-windows", "2", "--json")
    payload = json.loads(out.out)
    assert code == 0 and set(payload["ppl"]) == {"wikitext2", "ptb"}
    assert all(v > 1 for v in payload["ppl"].values())


def test_eval_is_recorded_and_read_back_without_loading_the_model(capsys, monkeypatch):
    argv = ("eval", "--model", "tiny-opt", "--ppl", "wikitext2", "--seq-len", "32", "--max-windows", "2", "--json")
    first = json.loads(run_cli(capsys, *argv)[1].out)
    assert Path(first["record"]).is_file() and first["seconds"]["load"] > 0
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a recorded evaluation was recomputed"))
    assert json.loads(run_cli(capsys, *argv)[1].out) == first


def test_zeroshot_of_a_pruned_folder_is_recorded_and_read_back(capsys, monkeypatch, tmp_path):
    main(["prune", "--model", "tiny-llama", "--n-calib", "4", "--seq-len", "32", "--batch-size", "2", "--ppl", "",
          "--test-error", "", "--out", str(tmp_path / "pruned")])
    capsys.readouterr()
    argv = ("zeroshot", "--pruned", str(tmp_path / "pruned"), "--tasks", "arc_easy,boolq", "--limit", "3", "--json")
    first = json.loads(run_cli(capsys, *argv)[1].out)
    assert {t: r["n"] for t, r in first["tasks"].items()} == {"arc_easy": 3, "boolq": 3}
    assert first["mean_acc"] == pytest.approx((first["tasks"]["arc_easy"]["acc"] + first["tasks"]["boolq"]["acc"]) / 2)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a recorded evaluation was recomputed"))
    assert json.loads(run_cli(capsys, *argv)[1].out) == first


def test_prune_json_has_the_documented_fields(capsys, tmp_path):
    code, out = run_cli(capsys, "prune", "--model", "tiny-opt", "--criterion", "wanda", "--sparsity", "2:4",
                        "--n-calib", "4", "--seq-len", "32", "--batch-size", "2", "--ppl", "wikitext2",
                        "--max-eval-windows", "2", "--n-test", "2", "--out", str(tmp_path / "pruned"), "--json")
    payload = json.loads(out.out)
    assert payload["sparsity"] == pytest.approx(0.5)
    assert len(payload["block_error"]) == 3 and payload["final_error"] == payload["block_error"][-1]
    assert len(payload["test_block_error"]["wikitext2"]) == 3 and payload["seconds"] > 0
    assert (tmp_path / "pruned" / "model.safetensors").exists()
    assert payload["dense_kept"]["model.decoder.embed_tokens.weight"].startswith("embedding: outside the decoder blocks")


@pytest.mark.parametrize("argv, words", [
    (["--sparsity", "1.5"], "sparsity must lie in (0, 1)"),
    (["--sparsity", "2:5"], "M=5 does not divide"),
    (["--criterion", "obs"], "unknown criterion 'obs'"),
    (["--model", "nonexistent-model"], "unknown model"),
    (["--recon", "br+gp+cr", "--epochs", "-1"], "epochs must be an integer ≥ 0"),
])
def test_bad_input_exits_with_a_message_and_writes_nothing(capsys, argv, words, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--model", "tiny-llama", "--n-calib", "4", "--seq-len", "32", "--batch-size", "2",
              "--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_embedded_model_perplexity_is_plausible(capsys):
    code, out = run_cli(capsys, "eval", "--model", "smollm2-135m", "--ppl", "wikitext2", "--seq-len", "256",
                        "--max-windows", "2", "--json")
    assert 10 < json.loads(out.out)["ppl"]["wikitext2"] < 60


def test_boolq_after_calibrating_on_boolq_passages_is_refused(capsys, tmp_path):
    main(["prune", "--model", "tiny-llama", "--calib", "boolq-passages", "--n-calib", "4", "--seq-len", "32",
          "--batch-size", "2", "--ppl", "", "--test-error", "", "--out", str(tmp_path / "pruned")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["zeroshot", "--pruned", str(tmp_path / "pruned"), "--tasks", "arc_easy,boolq", "--limit", "3"])
    assert exit_.value.code == 2 and "contaminated: drop boolq" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", "--model", "tiny-llama", "--calib", "boolq-passages", "--zeroshot", "boolq"])
    assert "contaminated" in capsys.readouterr().err


def test_prune_on_a_local_file_records_its_digest(capsys, tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text(" = A = \n" + " ".join(f"w{i}" for i in range(400)) + "\n")
    code, out = run_cli(capsys, "prune", "--model", "tiny-llama", "--calib", str(corpus), "--n-calib", "4",
                        "--seq-len", "32", "--batch-size", "2", "--ppl", "", "--test-error", "", "--json")
    record = json.loads(Path(json.loads(out.out)["record"]).read_text())
    assert record["calib_digest"] == reconlib_digest(corpus) and record["config"]["calib"] == str(corpus)


def reconlib_digest(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_the_reconlib_console_script_is_main(capsys, monkeypatch):
    """`pip install` puts `reconlib` on the PATH (pyproject's [project.scripts]); it is this main."""
    import tomllib

    from reconlib import __main__

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["reconlib"].partition(":")
    assert (module, name) == ("reconlib.__main__", "main")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/reconlib", "prune", "--help"])
    with pytest.raises(SystemExit) as done:
        __main__.main()
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: reconlib prune")


@pytest.mark.parametrize("argv", [["--criterion", "admm", "--sparsity", "2:4"], ["--criterion", "wanda", "--refit"],
                                  ["--criterion", "sparsegpt", "--sparsity", "0.6", "--allocation", "owl"]])
def test_the_baselines_run_from_the_cli_and_record_each_blocks_sparsity(capsys, argv):
    code, out = run_cli(capsys, "prune", "--model", "tiny-llama", "--n-calib", "4", "--seq-len", "32", "--batch-size",
                        "2", "--ppl", "", "--test-error", "", *argv, "--json")
    payload = json.loads(out.out)
    assert code == 0 and len(payload["block_sparsity"]) == 3  # tiny-llama: 3 blocks
    if "owl" in argv:
        assert sum(payload["owl"]["target"]) / 3 == pytest.approx(0.6)
    else:
        assert payload["block_sparsity"] == pytest.approx([0.5] * 3)
