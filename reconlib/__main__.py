"""Command line: `reconlib eval | prune | zeroshot | grid | summary | cost | rule | robust | records [verify | audit | band | mixed]`.

`reconlib` is the console script that `pip install` puts on the PATH; `python -m reconlib` is the same.
`prune` takes one flag per RunConfig field (generated from the dataclass), so the CLI, the notebooks and
the run records share one vocabulary.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .config import (ALLOCATIONS, BASELINES, CORPORA, CRITERIA, DTYPES, SCHEMES, TEST_SETS, RunConfig,
                     check_contamination, field_help, from_dict)


CHOICES = {"criterion": CRITERIA + BASELINES, "recon": SCHEMES, "dtype": DTYPES, "allocation": ALLOCATIONS}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field; its help is the field's comment in config.py (field_help)."""
    described = field_help()
    described["calib"] += f" (corpora: {', '.join(CORPORA)})"
    for name in ("ppl", "test_error"):
        described[name] += f" (from {', '.join(TEST_SETS)})"
    for f in fields(RunConfig):
        flag, default, kind = f"--{f.name.replace('_', '-')}", f.default, type(f.default)
        text = described.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if kind is tuple:
            parser.add_argument(flag, default=",".join(default), metavar="A,B",
                                help=f"{text}; comma-separated (default: {','.join(default) or 'none'})")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            # the choices are listed, not enforced here: RunConfig's own check names the bad value and the fix
            choices = f"; one of {', '.join(CHOICES[f.name])}" if f.name in CHOICES else ""
            parser.add_argument(flag, type=str if kind is str else kind, default=default,
                                help=f"{text}{choices} (default: %(default)s)")


def _emit(payload: dict, as_json: bool) -> None:
    if as_json:
        json.dump(payload, sys.stdout)
        sys.stdout.write("\n")
    else:  # for a person: a list or a mapping one item a line (a dry run lists ~150 runs)
        for key, value in payload.items():
            if isinstance(value, dict) and value:
                print(f"{key}:", *(f"  {k}: {v}" for k, v in value.items()), sep="\n")
            elif isinstance(value, list) and value:
                print(f"{key}:", *(f"  {i}. {v}" for i, v in enumerate(value, 1)), sep="\n")
            else:
                print(f"{key}: {value}")


def _dense(values: dict) -> dict:
    """The dense record (perplexity, zero-shot) of a model or a saved pruned folder: computed once, then read back."""
    from . import records

    config = from_dict(values)
    return {**records.dense(config), "record": str(records.dense_path(config))}


def cmd_eval(args) -> dict:
    record = _dense({"model": args.model, "ppl": args.ppl, "seq_len": args.seq_len,
                     "max_eval_windows": args.max_windows, "device": args.device})
    return {"model": args.model, "seq_len": args.seq_len, **{k: record[k] for k in ("ppl", "seconds", "record")}}


def cmd_prune(args) -> dict:
    from . import records

    values = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    config = from_dict(values)
    record = records.run(config, out=args.out, low_memory=args.low_memory)
    keep = ("sparsity", "block_sparsity", "owl", "block_error", "final_error", "test_block_error", "test_final_error",
            "ppl", "zeroshot", "peak_memory_mb", "key", "holdout_block_error", "unit_curves", "dense_kept",
            "unrouted_experts")
    return {**{k: record[k] for k in keep if k in record}, "seconds": record["seconds"]["total"], "config": record["config"],
            "calib_digest": record.get("calib_digest"), "record": str(records.path(config))}


def cmd_zeroshot(args) -> dict:
    if args.pruned and "boolq" in args.tasks.split(","):
        run = json.loads((Path(args.pruned) / "reconlib_config.json").read_text()) \
            if (Path(args.pruned) / "reconlib_config.json").is_file() else {}
        check_contamination(run.get("calib"), args.tasks.split(","), "drop boolq from --tasks",
                            who=f"{args.pruned} was calibrated on boolq-passages, which")
    record = _dense({"model": args.pruned or args.model, "ppl": "", "zeroshot": args.tasks,
                     "zeroshot_limit": args.limit, "device": args.device})
    return {**record["zeroshot"], "seconds": record["seconds"], "record": record["record"]}


def _write(text: str, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    else:
        print(text)


def cmd_report(args) -> dict:
    import os

    # a table is read from the store in seconds; computing a missing run takes hours, so only on request
    # (RECONLIB_COMPUTE=1), never as a side effect of asking what the store says
    asked = os.environ.get("RECONLIB_COMPUTE")
    os.environ["RECONLIB_COMPUTE"] = asked or "0"
    try:
        return _report(args)
    finally:  # main() is also called in-process (tests, notebooks): leave the environment as it was
        if asked is None:
            del os.environ["RECONLIB_COMPUTE"]


def _report(args) -> dict:
    from . import report

    if args.command == "records" and args.action == "band":
        from . import robust

        return robust.measure_band(args.profile, args.sample, progress=True)
    if args.command == "records" and args.action == "mixed":
        from . import findings, grid, records, stopping

        files = sorted({records.results_dir() / f"{k}.json" for m in grid.grid(args.profile).models
                        for df, _, key in stopping.every_recipe(args.profile, m)
                        for k in findings.mixed_keys(df, key)})
        _write("\n".join(map(str, files)), args.out)  # alone on stdout: `git rm $(reconlib records mixed)`
        return {}
    if args.command == "records" and args.action in ("verify", "audit"):
        from . import verify

        rows = (verify.verify(args.sample, args.profile, progress=True) if args.action == "verify"
                else verify.audit(args.profile, progress=True))
        _write((report.verify_markdown if args.action == "verify" else report.audit_markdown)(rows), args.out)
        return {"checked": len(rows), "failed": [r["record"] for r in rows if r["failures"] or r["flipped"]],
                "cases": sorted({r["case"] for r in rows}), "largest_relative_difference": max(
                    (r["worst"] for r in rows), default=0.0)}
    text = {"summary": report.summary_markdown, "cost": report.cost_markdown, "rule": report.rule_markdown,
            "records": lambda profile: report.records_markdown(), "robust": report.robust_markdown}[args.command](args.profile)
    _write(text, args.out)
    return {}


def cmd_grid(args) -> dict:
    from . import grid, parallel

    only = tuple(g.strip() for g in args.only.split(",") if g.strip()) if args.only else ()
    todo = grid.missing(args.profile, only)
    if args.dry_run:
        groups = grid.group_of(args.profile)
        by = {label: [c for _, c in todo if groups[c.key()] == name]
              for name, label in grid.GROUPS.items() if not only or name in only}
        hours = {k: grid.hours(v) for k, v in by.items()}  # each call reads the store: once a group, not again for all
        return {"missing": len(todo), "missing_by_finding": {k: len(v) for k, v in by.items()},
                "cpu_hours_by_finding": {k: round(h, 1) for k, h in hours.items()},
                "cpu_hours": round(sum(hours.values()), 1),
                "runs": [grid.label(kind, c) for kind, c in todo]}
    done = parallel.compute(args.profile, workers=args.workers, executor=args.executor, address=args.address,
                            only=only)
    return {"computed": len(done), "seconds": sum(s for _, _, s in done)}


def main(argv=None) -> int:
    prog = "reconlib" if Path(sys.argv[0]).name == "reconlib" else "python -m reconlib"  # as the user typed it
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="perplexity of a model (dense, or a saved pruned folder)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ppl", default="wikitext2,ptb")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=0, help="0 = the whole test set")
    p.add_argument("--device", default="auto", help="auto = cuda when available")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("prune", help="prune and reconstruct a model; one flag per RunConfig field")
    _add_config_flags(p)
    p.add_argument("--out", help="save the pruned model (HF folder) here")
    p.add_argument("--low-memory", action="store_true",
                   help="hold one block at a time: read from the safetensors, written to --out as it is final")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("zeroshot", help="zero-shot accuracy (lm-evaluation-harness definitions)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pruned", help="a folder written by `prune --out`")
    p.add_argument("--tasks", default="boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa")
    p.add_argument("--limit", type=int, default=0, help="first K items of each task (0 = all)")
    p.add_argument("--device", default="auto", help="auto = cuda when available")
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("grid", help="compute every missing record of the book's grid (resumable; grids sharing a "
                                    "store compute each run once between them)")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="runs side by side, one thread each")
    p.add_argument("--dry-run", action="store_true", help="list the missing runs, compute nothing")
    p.add_argument("--only", default="", help="comma-separated groups, the rest left alone: paper (dense and "
                   "findings 1-3), baselines (exact LR, ADMM, OWL), ladder (calibration sizes), early-stop (finding 4)")
    p.add_argument("--executor", choices=("process", "ray"), default="process",
                   help="process: a local pool; ray: a Ray cluster (pip install 'reconlib[distributed]')")
    p.add_argument("--address", help="ray: a running cluster ('auto', 'ray://head:10001'); none = a local one")
    p.set_defaults(func=cmd_grid)

    tables = {"summary": "markdown: every finding's verdict per model with its deciding numbers, and the intro table",
              "cost": "markdown: minutes and peak memory of pruning per model and scheme (the paper's Table 6)",
              "rule": "markdown: the verdict rule and its simulated false-positive rate and power",
              "robust": "markdown: each verdict's four robustness checks, the window shares and the evaluation's cost",
              "records": "markdown: the store's records and what wrote them; `verify` / `audit` recompute some here"}
    for name, text in tables.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--out")
        p.add_argument("--profile", default="cpu")
        p.set_defaults(func=cmd_report)
        if name == "records":
            p.add_argument("action", nargs="?", choices=("table", "verify", "audit", "band", "mixed"), default="table",
                           help="verify: check that every record is readable and its digest matches (listing each "
                                "damaged file), and recompute the --sample cheapest here at the thread count that wrote "
                                "them, judged bit-tight on the machine that wrote them and against a measured band "
                                "elsewhere; audit: the same for the cheapest record of each code version in the store; "
                                "band: the --sample cheapest cross-block runs of finding 2 per model under each kernel "
                                "variant, the spread robust.py sets a verdict's flip against (hours: a run a variant); mixed: the "
                                "files of every pair a verdict reads whose arms differ in code version or CPU, one a "
                                "line: `git rm` them and `make records` computes each pair again on one machine")
            p.add_argument("--sample", type=int, default=2)

    for p in sub.choices.values():
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    try:
        payload = args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        parser.exit(2, f"error: {e}\n")
    if payload:
        _emit(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
