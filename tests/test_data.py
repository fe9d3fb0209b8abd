import pytest
import torch

from reconlib import data


@pytest.fixture(scope="module")
def tokenizer(smollm):
    return smollm[1]


def test_eval_windows_are_the_joined_text_cut_without_overlap(tokenizer):
    w = data.eval_windows("wikitext2", tokenizer, 128, max_windows=3)
    assert w.shape == (3, 128)
    text = "".join(data.documents("wikitext2", "test"))
    assert text.lstrip("\n").startswith(" = Robert Boulter = ")
    stream = tokenizer(text[:5000], add_special_tokens=False).input_ids
    assert w.flatten()[:300].tolist() == stream[:300]


def test_window_count_is_how_many_windows_the_whole_test_set_gives(tokenizer):
    for corpus, length, bos in [("ptb", 512, None), ("ptb", 512, 7), ("wikitext2", 128, None)]:
        whole = data.eval_windows(corpus, tokenizer, length, bos=bos)
        count = data.window_count(corpus, tokenizer, length, bos is not None)
        assert count == whole.shape[0] and (count + 1) * (length - (bos is not None)) > len(data._stream(
            tokenizer, corpus, "test")) >= count * (length - (bos is not None))


def test_bos_is_prepended_to_every_window(tokenizer):
    w = data.eval_windows("ptb", tokenizer, 64, bos=7, max_windows=4)
    assert (w[:, 0] == 7).all() and w.shape == (4, 64)
    plain = data.eval_windows("ptb", tokenizer, 63, max_windows=4)
    assert torch.equal(w[:, 1:], plain)


def test_ptb_is_the_literatures_text_offline_and_from_the_hub(tokenizer, monkeypatch):
    """method.md §6: sentences stripped, joined with one space (the Hub's ptb_text_only holds them stripped)."""
    text = data.documents("ptb", "test")[0]
    assert text.startswith("no it was n't black monday but while") and "  " not in text
    lines = (data.data_dir() / "ptb/ptb.test.txt").read_text().splitlines()
    hub_rows = {"sentence": [line.strip() for line in lines]}  # the Hub's rows: one stripped sentence each
    monkeypatch.setattr(data, "_hub", lambda *a, **k: hub_rows)
    assert data._from_hub("ptb", "test") == (text,)
    assert data.eval_windows("ptb", tokenizer, 512).shape == (191, 512)  # 198 with the double spaces


def test_wikitext2_valid_is_sixty_articles_of_the_validation_file():
    docs = data.documents("wikitext2-valid", "train")
    assert len(docs) == 60 and all(d.startswith(" = ") and not d.startswith(" = = ") for d in docs)
    text = (data.data_dir() / "wikitext-2-tokenized/valid.txt").read_text()
    assert "".join(docs) == text[text.index(" = Homarus"):] and not text[:text.index(" = Homarus")].strip()
    assert docs[0].startswith(" = Homarus gammarus = ")


def test_local_corpora_txt_jsonl_and_folder(tokenizer, tmp_path):
    article = " ".join(f"word{i}" for i in range(300))
    txt = tmp_path / "c.txt"
    txt.write_text(f" = First = \n {article}\n = Second = \n {article}\n")
    assert len(data.documents(str(txt), "train")) == 2
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "%s"}\n\n{"text": "%s"}\n' % (article, article))
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.txt").write_text(article)
    assert len(data.documents(str(jsonl), "train")) == 2 and len(data.documents(str(folder), "train")) == 3
    x = data.calibration_set(str(folder), tokenizer, 4, 64, seed=0)
    assert x.shape == (4, 64)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="line 1: expected a JSON object with a string field 'text'"):
        data.documents(str(bad), "train")
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("too short")
    (short / "b.txt").write_text("also short")
    with pytest.raises(ValueError, match="longer than a window of 64 tokens"):
        data.calibration_set(str(short), tokenizer, 2, 64)


def test_calibration_windows_are_seeded_random_and_held_out(tokenizer):
    a = data.calibration_set("boolq-passages", tokenizer, 4, 64, seed=0)
    b = data.calibration_set("boolq-passages", tokenizer, 4, 64, seed=0)
    c = data.calibration_set("boolq-passages", tokenizer, 4, 64, seed=1)
    assert a.shape == (4, 64) and torch.equal(a, b) and not torch.equal(a, c)
    train, test = data.documents("boolq-passages", "train"), data.documents("boolq-passages", "test")
    assert not set(train) & set(test) and len(test) > 100


@pytest.mark.parametrize("bos", [None, 0])
def test_each_windows_document_is_the_one_its_text_is_cut_from(tokenizer, bos):
    """window_documents names, window by window, the article calibration_set cut it from: its text is in that
    article (finding 3 counts the more-real windows' articles with it)."""
    windows = data.calibration_set("wikitext2-valid", tokenizer, 24, 64, seed=3, bos=bos)
    picks = data.window_documents("wikitext2-valid", tokenizer, 24, 64, seed=3, bos=bos is not None)
    docs = data.documents("wikitext2-valid", "train")
    assert len(picks) == 24 and len(set(picks)) > 5
    for window, pick in zip(windows, picks):
        text = tokenizer.decode(window[bos is not None:])
        assert text in docs[pick] and sum(text in d for d in docs) == 1


@pytest.mark.parametrize("n, seq_len, words", [(0, 64, "positive integer"), (4, 0, "seq_len")])
def test_bad_sizes(tokenizer, n, seq_len, words):
    with pytest.raises(ValueError, match=words):
        data.calibration_set("boolq-passages", tokenizer, n, seq_len)


def test_missing_corpus_names_the_file_and_the_setting(tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("RECONLIB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(data, "_hub", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("offline")))
    data.documents.cache_clear(), data._stream.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match=r"'ptb' \(test\) is not available offline.*ptb/ptb.test.txt.*"
                                                    r"RECONLIB_DATA_DIR"):
            data.eval_windows("ptb", tokenizer, 64)
    finally:
        data.documents.cache_clear(), data._stream.cache_clear()
    with pytest.raises(ValueError, match="unknown corpus.*no such file"):
        data.documents("/nonexistent/corpus.txt")


def test_windows_longer_than_most_documents_warn_that_they_repeat_documents(tokenizer, caplog):
    """boolq passages: median ~115 tokens; 512-token windows can come from only a handful of them."""
    with caplog.at_level("WARNING", logger="reconlib.data"):
        data.calibration_set("boolq-passages", tokenizer, 16, 96, seed=0)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="reconlib.data"):
        x = data.calibration_set("boolq-passages", tokenizer, 16, 512, seed=0)
    assert x.shape == (16, 512)
    assert "distinct documents of boolq-passages" in caplog.text and "shorter seq_len" in caplog.text
