import pytest

from reconlib.config import PROFILES, RunConfig, from_dict, parse_sparsity, profile


def test_defaults_follow_the_paper():
    c = RunConfig()
    assert (c.lr, c.batch_size, c.epochs, c.criterion, c.recon) == (2e-4, 8, 10, "sparsegpt", "lr")
    assert c.train_epochs == 0  # LR is zero epochs
    assert c.replace(recon="br").train_epochs == 10


def test_key_is_stable_and_changes_with_any_field():
    a, b = RunConfig(), RunConfig()
    assert a.key() == b.key()
    assert RunConfig(sparsity=0.5).key() == RunConfig(sparsity="0.50").key()  # canonical form
    assert a.replace(seed=1).key() != a.key()
    assert a.replace(ppl="wikitext2").key() != a.key()


@pytest.mark.parametrize("text, expected", [("0.5", (0.5, 0, 0)), ("2:4", (0.5, 2, 4)), ("4:8", (0.5, 4, 8)),
                                            ("1:4", (0.75, 1, 4)), (0.7, (0.7, 0, 0))])
def test_parse_sparsity(text, expected):
    ratio, n_keep, group = parse_sparsity(text)
    assert (n_keep, group) == expected[1:] and abs(ratio - expected[0]) < 1e-12


@pytest.mark.parametrize("bad, words", [
    (dict(sparsity=0), "(0, 1)"), (dict(sparsity=1.0), "(0, 1)"), (dict(sparsity="4:4"), "N < M"),
    (dict(sparsity="5:4"), "N < M"), (dict(sparsity="half"), "neither"), (dict(criterion="obs"), "unknown criterion"),
    (dict(recon="cr"), "unknown recon"), (dict(n_calib=0), "only for magnitude LR"),
    (dict(n_calib=-1), "n_calib"), (dict(n_calib=0, criterion="magnitude"), "test_error=''"), (dict(seq_len=-1), "seq_len"),
    (dict(epochs=-1), "epochs"), (dict(lr=0), "lr must be > 0"), (dict(self_gen=-2), "self_gen"),
    (dict(batch_size=64, n_calib=32), "larger than the calibration set"), (dict(recon="br", epochs=0), "epochs ≥ 1"),
    (dict(ppl="wiki"), "unknown test set"), (dict(device="tpu"), "device"),
    (dict(calib="/no/such/file.txt"), "unknown calibration corpus.*existing .txt file"),
    (dict(calib="boolq-passages", zeroshot="boolq,rte"), "contaminated: drop boolq"),
])
def test_bad_values_name_the_problem(bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**bad)


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown config field.*'sparsty'.*valid fields are model, criterion"):
        from_dict({"sparsty": 0.5})


def test_profiles_are_valid_configs():
    for name in PROFILES:
        assert isinstance(profile(name), RunConfig)
    assert profile("cpu", criterion="wanda").criterion == "wanda"
    with pytest.raises(ValueError, match="unknown profile"):
        profile("laptop")


def test_a_local_calibration_file_is_keyed_by_its_content_not_its_path(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("some text " * 100)
    b.write_text("some text " * 100)
    ka, kb = RunConfig(calib=str(a)), RunConfig(calib=str(b))
    assert ka.calib_digest == kb.calib_digest and ka.key() == kb.key()
    b.write_text("other text " * 100)
    assert RunConfig(calib=str(b)).key() != ka.key()
    assert RunConfig().calib_digest is None  # a named corpus is its name


def test_a_field_added_later_keeps_the_keys_of_the_records_written_before_it():
    """book/records holds records keyed before `sequential` existed: at its default it must not move them."""
    import json
    from pathlib import Path

    files = [f for f in sorted(Path(__file__).parents[1].glob("book/records/*.json")) if "-" not in f.stem]
    assert files, "the committed record store is empty"
    for f in files:
        assert from_dict(json.loads(f.read_text())["config"]).key() == f.stem
    assert RunConfig(sequential=True).key() != RunConfig().key()
