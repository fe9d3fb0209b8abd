import json

import pytest

from reconlib import checkpoints, pipeline, records, reconstruct, verify
from reconlib.config import profile

from conftest import interrupt_after


def smoke(**kw):
    return profile("smoke", **{"recon": "br", **kw})


def test_run_writes_a_record_and_reuses_it(monkeypatch):
    config = smoke()
    record = records.run(config, progress=False)
    file = records.path(config)
    assert file.is_file() and json.loads(file.read_text())["key"] == config.key()
    assert record["sparsity"] == pytest.approx(0.5, abs=2e-3)  # SparseGPT prunes at or below a threshold
    assert len(record["block_error"]) == 3 and record["final_error"] == record["block_error"][-1]
    assert set(record["ppl"]) == {"wikitext2", "ptb"} and record["ppl"]["wikitext2"] > 1
    assert len(record["ppl_windows"]["ptb"]) == 2 and not records.unsealed(record)
    assert record["versions"]["torch"] and "machine" in record
    monkeypatch.setattr(reconstruct, "prune", lambda *a, **k: pytest.fail("a finished run was recomputed"))
    assert records.run(config, progress=False) == record


def test_an_interrupted_run_leaves_no_record(monkeypatch):
    config = smoke(seed=3)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.evaluate, "window_nll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        records.run(config, progress=False)
    assert not records.path(config).exists()
    assert not list(records.results_dir().glob("*.part"))


def test_write_is_atomic_when_serialisation_fails(tmp_path):
    file = tmp_path / "r.json"
    records.write(file, {"a": 1})
    with pytest.raises(TypeError):
        records.write(file, {"a": object()})
    assert json.loads(file.read_text()) == {"a": 1}
    assert list(tmp_path.iterdir()) == [file]


def test_dense_record_is_keyed_by_evaluation_settings_only():
    a, b = smoke(criterion="wanda"), smoke(criterion="magnitude", recon="lr")
    assert records.dense_path(a) == records.dense_path(b)
    assert records.dense_path(a) != records.dense_path(smoke(seq_len=16))
    record = records.dense(a)
    assert record["ppl"]["wikitext2"] > 1 and records.dense_path(a).is_file()


def test_a_local_model_saved_again_under_the_same_path_gets_new_records(tmp_path):
    folder = tmp_path / "pruned"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    config = smoke(model=str(folder))
    before = records.path(config), records.dense_path(config)
    assert before == (records.path(config), records.dense_path(config))  # stable while the files are
    (folder / "model.safetensors").write_bytes(b"\1" * 16)
    after = records.path(config), records.dense_path(config)
    assert before[0] != after[0] and before[1] != after[1]
    assert records.path(smoke()).name == f"{smoke().key()}.json"  # a model name carries no stamp


def test_low_memory_gives_the_same_record(tmp_path):
    """`prune --low-memory`: blocks read and written one at a time; every number of the record is the same."""
    from transformers import AutoTokenizer

    from reconlib import models

    source = tmp_path / "dense"
    tokenizer = AutoTokenizer.from_pretrained(models.resolve("smollm2-135m"))
    models.save_pruned(models.tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, source)
    config = smoke(model=str(source), recon="br+gp")
    whole = pipeline.compute(config, progress=False)
    lazily = pipeline.compute(config, progress=False, out=tmp_path / "pruned", low_memory=True)
    assert verify.judge(whole, lazily)["worst"] == 0.0  # every number, bit for bit
    no_eval = config.replace(ppl="", test_error="")  # nothing evaluated: the skeleton is never moved
    assert pipeline.compute(no_eval, progress=False, low_memory=True)["sparsity"] == lazily["sparsity"]
    assert models.load_model(str(tmp_path / "pruned"))[0].config.num_hidden_layers == 3


def test_a_resumed_run_counts_its_time_before_the_kill(monkeypatch):
    """seconds.total of a run killed and resumed includes the pruning its checkpoint kept (seconds.prune), in wall
    and in CPU seconds."""
    config = smoke(recon="br+gp", epochs=1, seed=5)
    monkeypatch.setattr(checkpoints, "EVERY", 0.0)
    real_train, real_resume, calls = reconstruct.train, checkpoints.resume, []

    def killed(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_train(*a, **k)

    monkeypatch.setattr(reconstruct, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        records.run(config, progress=False)
    monkeypatch.setattr(reconstruct, "train", real_train)
    # as if the killed run had pruned for 1000 s before its checkpoint, 400 of them on a core (clock.py)
    monkeypatch.setattr(checkpoints, "resume", lambda *a: (lambda t, s: (t, (s[0] + 1000.0, s[1] + 400.0)))(
        *real_resume(*a)))
    record = records.run(config, progress=False)
    for times, before in ((record["seconds"], 1000.0), (record["cpu_seconds"], 400.0)):
        assert times["prune"] >= before and times["total"] >= times["prune"]
    assert record["cpu_seconds"]["prune"] < 1000.0


def test_a_run_killed_in_its_evaluation_resumes_without_pruning_again(monkeypatch):
    """The pruning pass outlives a kill in the evaluation after it (a third of a Gemma 3 run): the same call again
    trains nothing, writes the uninterrupted run's record, and then removes its checkpoint."""
    from reconlib import evaluate, models

    config = smoke(recon="br+gp", epochs=1, seed=6)
    whole = pipeline.compute(config, progress=False, resumable=False)
    real_nll, real_train, trained = evaluate.window_nll, reconstruct.train, []
    monkeypatch.setattr(evaluate, "window_nll", interrupt_after(real_nll, 0, []))
    with pytest.raises(KeyboardInterrupt):
        pipeline.compute(config, progress=False)
    folder = models.cache_dir() / "checkpoints" / (config.key() + models.local_stamp(config.model))
    assert (folder / "state.pt").is_file()
    monkeypatch.setattr(evaluate, "window_nll", real_nll)
    monkeypatch.setattr(reconstruct, "train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    resumed = pipeline.compute(config, progress=False)
    assert trained == [] and verify.judge(whole, resumed)["worst"] == 0.0  # every number, bit for bit
    assert not folder.exists()
    # the killed process's pruning is counted in CPU seconds too, though the last process pruned nothing
    assert resumed["cpu_seconds"]["prune"] > 0.5 * whole["cpu_seconds"]["prune"] > 0
    assert resumed["cpu_seconds"]["total"] > resumed["cpu_seconds"]["prune"] + resumed["cpu_seconds"]["ppl_wikitext2"]
    assert resumed["cpu_seconds"].keys() == whole["cpu_seconds"].keys() == whole["seconds"].keys()


def test_the_provenance_head_counts_the_dense_records_compute_too():
    """The store's cost on the provenance page: pruning runs' totals plus every dense record's timings."""
    from reconlib import report

    env = {"machine": {"platform": "linux", "cpus": 2, "gpu": None}, "versions": {"torch": "x"}}
    config = {"model": "m", "criterion": "wanda", "recon": "lr", "seed": 0, "epochs": 2, "n_calib": 4, "self_gen": 0}
    records.write(records.results_dir() / "aaaa.json", {"key": "aaaa", "config": config, "final_error": 1.0,
                                                        "seconds": {"prune": 1000, "total": 1800}, **env})
    records.write(records.results_dir() / "dense-bbbb.json", {"config": config, "seconds": {"ppl_ptb": 3600,
                                                                                             "zeroshot": 1800}, **env})
    head = report.records_markdown().split("\n")[0]
    assert head.startswith("1 pruning runs and 1 dense evaluations, 2.0 hours of compute in all")  # (1800+5400) s
    # and the machines by CPU model, counted (a record older than CPU names says so)
    assert "Machines: CPU not recorded (linux, 2 CPUs, GPU: none): 1 runs." in head


# ------------------------------------------------------------------ damaged files (issue #37)
def _sealed(config) -> dict:
    return records.seal({"key": config.key(), "config": config.to_dict(), "block_error": [0.5, 0.25],
                         "seconds": {"total": 1.0}})


DAMAGE = {  # how a record gets damaged → (its text, words its line must hold besides the name and the fix)
    "cut short": (lambda record: json.dumps(record, indent=1)[:60], "is not valid JSON"),
    "git conflict": (lambda record: "<<<<<<< HEAD\n" + json.dumps(record, indent=1) + "\n=======\n"
                     + json.dumps(record | {"digest": "theirs"}, indent=1) + "\n>>>>>>> other\n",
                     "holds git conflict markers"),
    "edited": (lambda record: json.dumps(record | {"block_error": [0.5, 0.2]}, indent=1),
               "was changed after it was written"),
}


def _damaged_line(file, kind: str) -> str:
    """The one line that names `file`, as `records.read` raises it, after checking what it says."""
    with pytest.raises(records.DamagedRecord) as raised:
        records.read(file)
    line = str(raised.value)
    assert "\n" not in line and f"record {file.name} " in line and DAMAGE[kind][1] in line
    assert f"git checkout --ours -- {file}" in line if kind == "git conflict" else f"git checkout -- {file}" in line
    assert "delete it to recompute it" in line
    return line


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_record_names_itself_in_prune_eval_and_the_books_tables(kind, capsys, monkeypatch):
    """`prune`, `eval` and each step of `make tables` stop on the damaged record with its one line (not
    `error: Expecting value: line 7 column 3`)."""
    from reconlib import grid
    from reconlib.__main__ import main
    from reconlib.config import RunConfig, from_dict

    damage = DAMAGE[kind][0]
    pruned = RunConfig(model="tiny-llama")  # what `prune --model tiny-llama` reads
    dense = from_dict({"model": "tiny-llama", "ppl": "wikitext2", "seq_len": 512, "max_eval_windows": 2, "device": "auto"})
    read_first_by_the_book = records.dense_path(grid.dense_cell("smoke", full=True))  # the intro table's first row
    for step in ("compute", "compute_dense"):
        monkeypatch.setattr(pipeline, step, lambda *a, **k: pytest.fail("a damaged record was recomputed"))
    for file, argv in [(records.path(pruned), ["prune", "--model", "tiny-llama"]),
                       (records.dense_path(dense), ["eval", "--model", "tiny-llama", "--ppl", "wikitext2",
                                                    "--max-windows", "2"]),
                       (read_first_by_the_book, ["summary", "--profile", "smoke"]),
                       (records.path(grid.cell("smoke", criterion="wanda", recon="lr")), ["records", "--profile", "smoke"]),
                       (read_first_by_the_book, ["records", "verify", "--profile", "smoke"])]:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(damage(_sealed(pruned)))
        line = _damaged_line(file, kind)
        with pytest.raises(SystemExit) as ended:
            main(argv)
        assert ended.value.code == 2 and capsys.readouterr().err == f"error: {line}\n", argv
        file.unlink()


def test_verify_lists_every_damaged_file_of_the_store(capsys):
    from reconlib.__main__ import main

    lines = []
    for seed, kind in enumerate(DAMAGE):
        config = smoke(seed=seed)
        records.path(config).parent.mkdir(parents=True, exist_ok=True)
        records.path(config).write_text(DAMAGE[kind][0](_sealed(config)))
        lines.append(_damaged_line(records.path(config), kind))
    records.write(records.path(smoke(seed=9)), _sealed(smoke(seed=9)))  # a sound record: not listed
    with pytest.raises(SystemExit):
        main(["records", "verify", "--profile", "smoke", "--sample", "0"])
    assert sorted(capsys.readouterr().err.removeprefix("error: ").splitlines()) == sorted(lines)
