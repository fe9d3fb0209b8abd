"""The evidence grid: every run that the book's findings read, per profile, and the command that computes
the missing ones (`python -m reconlib grid`, `make records`).

One function, `cell`, turns (profile, model, seed, criterion, scheme, sweep value) into the RunConfig that
the findings read, so the grid and the pages can never disagree on which runs there are. A run is computed
once and recorded at once (records.run); a killed grid resumes at the next unrecorded run.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import CRITERIA, SCHEMES, RunConfig, from_dict, profile as base_profile
from .zeroshot import TASKS


@dataclass(frozen=True)
class Grid:
    models: dict            # model → seeds; the first seed also carries the single-seed sweep points
    epochs: tuple           # finding 2: epochs of SparseGPT BR+GP+CR (the profile's value among them)
    n_calib: tuple          # finding 2: calibration windows
    self_gen: tuple         # finding 3: self-generated windows added (0 and the largest are read by the verdict)
    zeroshot_limit: int     # items per zero-shot task, for the dense model and the rows in ZEROSHOT_ROWS
    full_eval: bool         # the intro table's rows get perplexity on the whole test sets
    lr: dict = field(default_factory=dict)  # model → Adam's lr, where the profile's overshoots (bench/lr_check.py)
    fewer: dict = field(default_factory=dict)  # model → seeds of its finding 4 runs and 70% block, where fewer
    # finding 4 (early stopping): held-out windows, the (n_calib, epochs) settings it compares (the profile's own is
    # added), and the sweep on the first model's first seed that chose them
    holdout: int = 0
    stop_settings: tuple = ()
    stop_sweep: tuple = ()
    stop_control_seeds: int = 5  # seeds of the profile's own setting in finding 4 (the model's fewer, where fewer)
    # findings 2 and 3 (their verdict runs): the evaluation they read, on top of the profile's, and the seeds of
    # finding 2's pair (finding 3's arms run on the model's seeds)
    evaluation: dict = field(default_factory=dict)
    pair_seeds: tuple = ()
    # finding 2's pair along the calibration set's size: model → (n_calib, seq_len) points beside the profile's own,
    # on each model's first ladder_seeds seeds, everything else the book's (epochs, lr, batch, evaluation)
    ladder: dict = field(default_factory=dict)
    ladder_seeds: int = 3
    baselines: bool = False  # the exact-LR, ADMM and OWL rows (baseline_cells)


GRIDS = {
    # every row and section of the book's grid in seconds, so that the tests render each page with runs in it
    "smoke": Grid(models={"tiny-llama": (0, 1)}, epochs=(1, 2), n_calib=(4, 8), self_gen=(0, 8),
                  zeroshot_limit=2, full_eval=False, holdout=4, stop_settings=((4, 4),), stop_sweep=((4, 8),),
                  stop_control_seeds=1, ladder={"tiny-llama": ((4, 16), (16, 16))}, baselines=True),
    # 5 seeds: a one-sided paired t-test at α = 0.05 then has 80% power at an effect of about 1.5 sd
    "cpu": Grid(models={"smollm2-135m": (0, 1, 2, 3, 4), "gemma3-270m": (0, 1, 2, 3, 4)}, epochs=(1, 2, 4),
                n_calib=(16, 32, 64), self_gen=(0, 32, 64), zeroshot_limit=100, full_eval=True,
                # lr 1e-3 makes Adam end above its start on Gemma 3 (block 0's error 1.9 → 4.7): the paper's 2e-4
                lr={"gemma3-270m": 2e-4},
                fewer={"gemma3-270m": (0, 1, 2)},
                # perplexity at a 512-token context on 80 windows spread over each test set (41k tokens), sized on
                # the earlier 32 × 128 runs by a rule that held the seeds' variance fixed; on the runs themselves
                # the deciding parts need more (robust.sizing, the evidence page), at a cost beyond the budget, so
                # the verdicts' window bootstrap carries it; 10 seeds on finding 2's pair, where one seed less
                # flipped both models' verdicts
                evaluation=dict(eval_len=512, max_eval_windows=80), pair_seeds=tuple(range(10)),
                # from a quarter of the book's 8k calibration tokens to a quarter of the paper's 262k; Gemma 3 at
                # the two cheapest new points. `hours` prices these at 19.5 CPU-hours on cores of their own (Gemma
                # 3's 6.1 once its perplexity pass is priced at its own rate), past the 16 the ladder may spend:
                # the points run cheapest first and the ladder stops where its measured hours reach 16, as priced
                # before SmolLM2's 256 × 256 (5.9); 256 × 512 (half the paper's tokens) would add 11.3 for its 3
                # seeds, so it is left out
                ladder={"smollm2-135m": ((16, 128), (256, 128), (64, 512), (256, 256)),
                        "gemma3-270m": ((16, 128), (256, 128))}, baselines=True,
                # 16 windows × 8 epochs: the book's 64 Adam steps a unit on a quarter of its windows, where the
                # calibration error falls 3.7× from 2 epochs and the test error does not; 4 windows overfit far
                # more (the sweep of 4–16 windows × 8–32 epochs, on the page) but leave too little to reconstruct
                # from to be a setting anyone would use. 16 held-out windows each
                holdout=16, stop_settings=((16, 8),), stop_sweep=((4, 8), (4, 32), (16, 8), (16, 32))),
    "paper": Grid(models={"facebook/opt-125m": (0,)}, epochs=(5, 10), n_calib=(128, 256), self_gen=(0, 256),
                  zeroshot_limit=0, full_eval=True),
}
GRIDS_OF_THE_BOOK = frozenset(GRIDS)
ZEROSHOT_ROWS = {(c, s) for c in ("sparsegpt", "wanda") for s in ("lr", "br+gp", "br+gp+cr")}
INTRO_ROWS = {("sparsegpt", "lr"), ("sparsegpt", "br+gp+cr")}  # full test sets, first model and seed


def grid(profile: str) -> Grid:
    if profile not in GRIDS:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(GRIDS)}")
    return GRIDS[profile]


def derive(profile: str, fixed: tuple = (), model: str | None = None, models=None, seeds=None, **fields) -> str:
    """A reader's setting: the profile's grid with their models, seeds and RunConfig fields on top, registered
    under a name of its own (returned), so every function here serves it as it serves the book's. `fixed`: the
    fields the caller compares itself (finding 1's criterion and recon, say), which a reader cannot set.
    Without a model, seed or field, the profile itself: the book's pages stay as they are."""
    from .config import PROFILES, field_names
    from .models import check

    accepted = ["models", "seeds"] + [f for f in field_names() if f not in fixed]
    refused = sorted(set(fields) - set(accepted))
    if refused:
        raise ValueError(f"this notebook cannot honour {refused}: it compares {', '.join(fixed) or 'nothing'} itself. "
                         f"It accepts profile, {', '.join(accepted)}")
    if "seed" in fields:
        seeds = (fields.pop("seed"),)
    g = grid(profile)
    chosen = [check(m) for m in ([model] if model else list(models) if models else list(g.models))]
    if not (model or models or seeds is not None or fields):
        return profile
    from_dict({**PROFILES[profile], **fields, "model": chosen[0]})  # every field checked once, here
    seeds = tuple(seeds) if seeds is not None else None
    name = profile + "+" + ",".join(f"{k}={v}" for k, v in sorted(
        {**fields, "models": "+".join(chosen), "seeds": seeds}.items()) if v is not None)
    values = {f: tuple(sorted(set(getattr(g, f)) | {fields[f]})) if f in fields else getattr(g, f)
              for f in ("epochs", "n_calib")}  # the reader's own value is a point of its sweep
    PROFILES[name] = {**PROFILES[profile], **fields, "model": chosen[0]}
    GRIDS[name] = replace(g, models={m: seeds or g.models.get(m, next(iter(g.models.values()))) for m in chosen},
                          evaluation={k: v for k, v in g.evaluation.items() if k not in fields},
                          pair_seeds=seeds or g.pair_seeds,
                          lr={m: v for m, v in g.lr.items() if m in chosen and "lr" not in fields},
                          fewer={m: v for m, v in g.fewer.items() if m in chosen and seeds is None}, **values)
    return name


def setup(namespace: dict, fixed: tuple = (), single: bool = False) -> str:
    """A notebook's parameters (papermill injects them as globals) → the profile it reads (`derive`), after
    saying what the runs it will compute cost. Called right after the parameters cell, so every literal global
    is a parameter: a name that is neither profile, models, seeds nor a RunConfig field is refused, and so is a
    field the notebook compares itself, instead of being ignored."""
    from .config import field_names

    literal = (str, int, float, bool, tuple, list, type(None))
    params = {k: v for k, v in namespace.items()
              if not k.startswith("_") and k not in ("In", "Out") and isinstance(v, literal)}
    name = params.pop("profile", "cpu")
    unknown = sorted(set(params) - set(field_names()) - {"models", "seeds"})
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}: use profile, models, seeds or RunConfig fields "
                         f"({', '.join(field_names())})")
    name = derive(name, fixed, **params)
    from transformers.utils import logging

    from . import records

    # a fresh machine converts the embedded GGUF models on first use, and transformers' bars for that would land
    # on whichever page first touches a model: the pages read the same on a fresh machine as on a warm one
    logging.disable_progress_bar()

    # single: the notebook reads one run (the quickstart), else every run of the setting's grid
    todo = [c for c in [cell(name, seed=seeds(name, base(name).model)[0])] if not records.path(c).is_file()] \
        if single else [c for _, c in missing(name)]
    if todo and name not in GRIDS_OF_THE_BOOK:
        print(f"{len(todo)} run(s) of this setting are missing from {records.results_dir()}: about "
              f"{hours(todo):.1f} CPU-hours at the rate of the records there (one thread), computed here one by one.")
    return name


def ppl_time(record: dict, seconds: dict | None = None) -> tuple[float, int]:
    """A record's perplexity pass → (seconds, windows evaluated), over its test sets; `seconds`: its phases timed
    another way than its wall seconds (own_seconds)."""
    seconds = record["seconds"] if seconds is None else seconds
    return (sum(v for k, v in seconds.items() if k.startswith("ppl_")),
            sum(len(v) for v in record.get("ppl_windows", {}).values()))


def cpu(machine: dict) -> tuple:
    """The kind of CPU a rate carries between: machines sold under one name run AVX2 on some hosts and AVX-512 on
    others, 2x apart."""
    return machine.get("cpu_model"), machine.get("cpu_capability")


def slowdowns(done: list[dict]) -> list[float]:
    """How much slower than on cores of its own each record's run went: the records time runs beside whatever else
    shared their cores (2-4x slower on this store while tests or kernel recomputations ran beside the grid).
    Interference only slows a run, so each record's perplexity seconds a window over the fastest of its kind (the
    same model, window length and CPU) measures it; that phase stands for the whole run."""
    def rate(r):
        seconds, windows = ppl_time(r)
        return seconds / windows if windows else None

    def kind(r):
        c = from_dict(r["config"])
        return c.model, c.eval_window, cpu(r.get("machine", {}))

    rates = [rate(r) for r in done]
    fastest = {}
    for r, x in zip(done, rates):
        if x:
            fastest[kind(r)] = min(x, fastest.get(kind(r), x))
    return [x / fastest[kind(r)] if x else 1.0 for r, x in zip(done, rates)]


def own_seconds(done: list[dict]) -> list[dict]:
    """Each record's phase seconds as on cores of its own: its CPU seconds (clock.py) where it keeps them, else its
    wall seconds over its `slowdowns`, the proxy for records written before they were kept (it reads a whole run
    off its perplexity pass, and so misreads one whose phases met different loads: Gemma 3's CR seed 0 at 80 × 512
    spent 1,248 s outside perplexity and read 427)."""
    return [r.get("cpu_seconds") or {k: v / f for k, v in r["seconds"].items()} for r, f in zip(done, slowdowns(done))]


def hours(todo: list[RunConfig]) -> float:
    """About how many CPU-hours (one thread, on cores of its own) `todo` takes. The perplexity pass and the rest of
    a run are priced apart, each at its model's median seconds per million tokens over the records at hand (the
    book's committed store where there are none), each record's times as on cores of its own (own_seconds): a perplexity
    token goes through the output head, which pruning never does, and Gemma 3's 262k-word head costs it about twice
    its blocks: at one rate, Gemma 3's BR+GP at 80 × 512 windows read 538 s off its 32 × 128 runs, and took 2,117
    beside nothing but the grid (1,239 priced apart; SmolLM2's within 6%). The rates are this CPU's where the store
    holds its runs of the model (machines of one name differ 2x), else every CPU's, else the other models'."""
    from . import provenance, records

    timed = lambda rs: [r for r in rs if r.get("config") and "total" in r.get("seconds", {})]  # noqa: E731
    book = Path(__file__).resolve().parents[1] / "book" / "records"
    # a reader's empty results folder: the rates of the book's store, where it is
    done = timed(records.all_records()) or timed(records.read_all(
        f for f in sorted(book.glob("*.json")) if not f.name.startswith("dense-")).values())
    here = cpu(provenance.machine())
    ppl, rest = {}, {}  # model → [(whether this CPU's, seconds per million tokens)]
    for r, times in zip(done, own_seconds(done)):
        c = from_dict(r["config"])
        own = cpu(r.get("machine", {})) == here
        seconds, windows = ppl_time(r, times)
        if windows:
            ppl.setdefault(c.model, []).append((own, seconds / (windows * c.eval_window / 1e6)))
        rest.setdefault(c.model, []).append((own, (times["total"] - seconds) / (cost(c) - ppl_tokens(c))))

    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731

    def rate(rates, model):
        xs = rates.get(model, [])
        if xs:
            return median([x for own, x in xs if own] or [x for _, x in xs])
        return median([x for xs in rates.values() for _, x in xs]) if rates else 300.0  # SmolLM2's, where none

    return sum((cost(c) - ppl_tokens(c)) * rate(rest, c.model) + ppl_tokens(c) * rate(ppl, c.model)
               for c in todo) / 3600


def base(profile: str, model: str | None = None, **overrides) -> RunConfig:
    """The profile's config for one of its models (the first by default)."""
    return base_profile(profile, model=model or next(iter(grid(profile).models)), **overrides)


def cell(profile: str, model: str | None = None, seed: int = 0, **fields) -> RunConfig:
    """The one config the findings read for this point: the profile's base with `fields` on top, plus the
    evaluation the grid gives that row (zero-shot, whole test sets) on the model's first seed."""
    own, g = base(profile, model), grid(profile)
    config = own.replace(seed=seed, **fields)
    first_model, first_seed = next(iter(g.models)), g.models[config.model][0]
    default = (config.epochs, config.n_calib, config.self_gen, config.extra_real, config.holdout, config.eval_len) == \
        (own.epochs, own.n_calib, 0, 0, 0, own.eval_len)
    row = (config.criterion, config.recon)
    extra = {}
    if config.recon != "lr" and config.model in g.lr:  # LR trains nothing: its records keep the profile's key
        extra |= dict(lr=lr(profile, config.model))
    if seed == first_seed and default and row in ZEROSHOT_ROWS:
        extra |= dict(zeroshot=TASKS, zeroshot_limit=g.zeroshot_limit)
    if g.full_eval and seed == first_seed and default and row in INTRO_ROWS and config.model == first_model:
        extra |= dict(max_eval_windows=0)
    return config.replace(**extra) if extra else config


def dense_cell(profile: str, model: str | None = None, full: bool = False) -> RunConfig:
    """The dense model's evaluation: the fixed subset, or (full) with zero-shot, and on the first model (the
    intro table's) the whole test sets: a whole-set pass costs Gemma 3 about as much as its grid runs."""
    g = grid(profile)
    if full:
        whole = g.full_eval and (model or next(iter(g.models))) == next(iter(g.models))
        return base(profile, model, max_eval_windows=0 if whole else None, zeroshot=TASKS,
                    zeroshot_limit=g.zeroshot_limit)
    return base(profile, model)


def lr(profile: str, model: str) -> float:
    """The lr of the model's Adam runs in this profile."""
    return grid(profile).lr.get(model, base(profile, model).lr)


def seeds(profile: str, model: str) -> tuple:
    return grid(profile).models[model]


def error_reduction_cells(profile: str, model: str) -> list[RunConfig]:
    """Finding 1: every criterion × scheme, every seed."""
    return [cell(profile, model, s, criterion=c, recon=r) for s in seeds(profile, model) for c in CRITERIA
            for r in SCHEMES]


def sweep_cells(profile: str, model: str, field: str) -> list[RunConfig]:
    """Finding 2's epochs and n_calib sweeps, finding 3's self_gen (SparseGPT, BR+GP+CR): every value on the
    first seed; the profile's own on every seed (a verdict reads it; finding 3's on every seed: self_gen_cells)."""
    values = getattr(grid(profile), field)
    own = getattr(base(profile, model), field)
    read = {own}
    return [cell(profile, model, s, criterion="sparsegpt", recon="br+gp+cr", **{field: v})
            for v in values for s in seeds(profile, model) if v in read or s == seeds(profile, model)[0]]


def overfitting_cells(profile: str, model: str) -> list[RunConfig]:
    """Finding 2's pair, SparseGPT BR+GP and BR+GP+CR, on the grid's pair_seeds (else the model's), each seed's
    two arms side by side, with the evaluation the grid gives the verdict runs."""
    g = grid(profile)
    return [cell(profile, model, s, criterion="sparsegpt", recon=r, **g.evaluation)
            for s in g.pair_seeds or seeds(profile, model) for r in ("br+gp", "br+gp+cr")]


def self_gen_cells(profile: str, model: str) -> dict[str, list[RunConfig]]:
    """Finding 3 and its two controls on every seed, SparseGPT BR+GP+CR. Adding k = n generated windows to n
    real ones changes two things besides the text: twice the Adam steps, and n more windows. So: "real" (no
    generated text), "generated" (+n), "steps" (no generated text, twice the epochs: the same steps), "more
    real" (+n real windows, for reconstruction only as generated ones are: the same masks)."""
    own = base(profile, model)
    k = own.n_calib  # as many generated windows as real ones: twice the steps, a whole number of epochs
    variants = {"real": {}, "generated": dict(self_gen=k), "steps": dict(epochs=2 * own.epochs),
                "more real": dict(extra_real=k)}
    return {name: [cell(profile, model, s, criterion="sparsegpt", recon="br+gp+cr", **grid(profile).evaluation, **v)
                   for s in seeds(profile, model)] for name, v in variants.items()}


STOP_VARIANTS = {"fixed": {}, "early stop": dict(early_stop=True), "more real": None}


def stop_settings(profile: str) -> list[tuple[int, int]]:
    """Finding 4's (n_calib, epochs) settings: the grid's, then the profile's own."""
    own = base(profile)
    return list(dict.fromkeys(grid(profile).stop_settings + ((own.n_calib, own.epochs),)))


def early_stop_cells(profile: str, model: str) -> list[RunConfig]:
    """Finding 4, SparseGPT, each setting × BR+GP / BR+GP+CR × variant: "fixed" measures the held-out windows and
    trains its epochs, "early stop" keeps each unit's best point on them, "more real" trains on them too
    (extra_real, so the masks stay the n_calib windows'), without stopping. Every setting on the model's seeds
    (its fewer, where it has them); the profile's own, where units stop near their last epoch, on its first
    stop_control_seeds of them: it asks what stopping does where there is little to stop."""
    g = grid(profile)
    own = base(profile, model)
    out = []
    for n_calib, epochs in stop_settings(profile):
        control = (n_calib, epochs) == (own.n_calib, own.epochs)
        for s in g.fewer.get(model, g.models[model])[:g.stop_control_seeds if control else None]:
            for recon in ("br+gp", "br+gp+cr"):
                for variant in STOP_VARIANTS.values():
                    fields = dict(holdout=g.holdout, **variant) if variant is not None else dict(extra_real=g.holdout)
                    out.append(cell(profile, model, s, criterion="sparsegpt", recon=recon, n_calib=n_calib,
                                    epochs=epochs, **fields))
    return out


def stop_sweep_cells(profile: str) -> list[RunConfig]:
    """The sweep that chose finding 4's setting: BR+GP+CR with held-out curves, first model and seed."""
    g = grid(profile)
    model = next(iter(g.models))
    own = base(profile)
    return [cell(profile, model, g.models[model][0], criterion="sparsegpt", recon="br+gp+cr", n_calib=n, epochs=e,
                 holdout=g.holdout) for n, e in dict.fromkeys(g.stop_sweep + ((own.n_calib, own.epochs),))]


def paper_runs(profile: str) -> list[RunConfig]:
    """The pruning runs of the paper's three findings, without repeats, in the order the pages read them."""
    out = {}
    for model in grid(profile).models:
        verdict_runs = overfitting_cells(profile, model) + [c for cs in self_gen_cells(profile, model).values() for c in cs]
        verdict_runs.sort(key=lambda c: c.seed)  # a seed's arms side by side: its pairs on one machine, in one session
        for c in error_reduction_cells(profile, model) + [
                c for f in ("epochs", "n_calib", "self_gen") for c in sweep_cells(profile, model, f)] + verdict_runs:
            out.setdefault(c.key(), c)
    return list(out.values())


def runs(profile: str) -> list[RunConfig]:
    """Every pruning run of the grid, without repeats, in the order the pages read them (finding 4's last: it
    came last, and a partial store should first complete the paper's three; within it, the verdicts' runs first)."""
    out = {c.key(): c for c in paper_runs(profile)}
    if grid(profile).holdout:
        f4 = [c for m in grid(profile).models for c in early_stop_cells(profile, m)] + stop_sweep_cells(profile)
        # the chosen settings on every model first: they decide the verdicts; the sweep and the control ask less
        f4.sort(key=lambda c: (c.n_calib, c.epochs) not in grid(profile).stop_settings)
        for c in f4:
            out.setdefault(c.key(), c)
    # beyond: the exact-LR, ADMM and OWL baselines (#39), then the calibration-size ladder, cheapest first (#40)
    for c in [c for cells in baseline_cells(profile).values() for c in cells] + \
            sorted((c for m in grid(profile).models for c in ladder_cells(profile, m)), key=cost):
        out.setdefault(c.key(), c)
    return list(out.values())


def baseline_cells(profile: str) -> dict[str, list[RunConfig]]:
    """Issue 39's rows, a group of their own (queued after finding 4's; none where the grid has no baselines): "exact lr", finding 1's LR with each criterion's
    survivors refit by least squares plus ADMM, on finding 1's seeds of every model; "owl", the 70% block
    {uniform, owl} × {LR, BR+GP} × {Wanda, SparseGPT} on the model's fewer seeds where it has them (5 SmolLM2, 3
    Gemma 3)."""
    exact, allocation = [], []
    for model in grid(profile).models if grid(profile).baselines else ():
        exact += [cell(profile, model, s, criterion=c, recon="lr", refit=True) for c in CRITERIA
                  for s in seeds(profile, model)]
        # ADMM ends with the exact solve itself: refit stays off whatever a notebook's reader sets
        exact += [cell(profile, model, s, criterion="admm", recon="lr", refit=False) for s in seeds(profile, model)]
        allocation += [cell(profile, model, s, criterion=c, recon=r, sparsity="0.7", allocation=a)
                       for s in grid(profile).fewer.get(model, seeds(profile, model))
                       for c in ("wanda", "sparsegpt") for r in ("lr", "br+gp") for a in ("uniform", "owl")]
    # both questions read perplexity and final error: no zero-shot, which cell's first-seed rule would add (Gemma
    # 3: ~6 min a run that no page reads)
    return {name: [c.replace(zeroshot=(), zeroshot_limit=0) for c in cells]
            for name, cells in (("exact lr", exact), ("owl", allocation))}


def ladder_cells(profile: str, model: str, own: bool = False) -> list[RunConfig]:
    """Finding 2's pair (SparseGPT BR+GP, BR+GP+CR, the verdict runs' evaluation) at each of the model's ladder
    points, its first ladder_seeds seeds, cheapest point first; `own`: with the book's point (finding 2's runs)."""
    g = grid(profile)
    points = list(g.ladder.get(model, ()))
    mine = base(profile, model)
    if own:
        points.append((mine.n_calib, mine.seq_len))
    cells = [cell(profile, model, s, criterion="sparsegpt", recon=r, n_calib=n, seq_len=t, **g.evaluation)
             for n, t in points for s in seeds(profile, model)[:g.ladder_seeds] for r in ("br+gp", "br+gp+cr")]
    return sorted(cells, key=lambda c: (cost(c.replace(recon="br+gp+cr", seed=0)), c.seed))


def dense_runs(profile: str) -> list[RunConfig]:
    """The dense evaluations: the profile's (subset and full) and, where it has one, the verdict runs'."""
    g = grid(profile)
    return [dense_cell(profile, m, full) for m in g.models for full in (False, True)] + \
        [base(profile, m, **g.evaluation) for m in g.models if g.evaluation]


WHOLE_SET = 300_000   # tokens of a whole WikiText-2 or PTB test set, about
ZEROSHOT_ITEM = 150    # tokens a zero-shot item costs, its choices together, about
LOAD = 3_000           # a run's fixed cost (loading, converting, the windows), in tokens' worth


def ppl_tokens(config: RunConfig) -> float:
    """Millions of tokens the run's perplexity pass scores, about: its share of `cost`."""
    windows = len(config.ppl) * config.max_eval_windows * config.eval_window
    return (windows + len(config.ppl) * WHOLE_SET * (config.max_eval_windows == 0)) / 1e6


def cost(config: RunConfig) -> float:
    """Millions of tokens through the model, about: what a run's time is proportional to on one model, so that
    a rate measured at one setting (hours) carries to another. Pruning passes the calibration windows some four
    times a block, Adam three times an epoch (forward, backward; twice over for CR's two-block units), and the
    evaluations their windows once (`ppl_tokens` the perplexity pass's, which `hours` prices at its own rate)."""
    real = config.n_calib + config.extra_real
    unit = 2 if config.recon == "br+gp+cr" else 1
    trained = config.train_epochs * 3 * (real + config.self_gen) * unit
    # held-out windows: their two streams (twice, like a test set), and the curves' forward of them and of the
    # trained windows before training and after each epoch
    trained += 2 * config.holdout + (config.train_epochs + 1) * (real + config.self_gen + config.holdout) * unit \
        * (config.holdout > 0)
    evaluated = 2 * len(config.test_error) * config.n_test
    tokens = (4 * real + trained + evaluated + 10 * config.self_gen) * config.seq_len
    tokens += len(config.zeroshot) * (config.zeroshot_limit or 1000) * ZEROSHOT_ITEM
    return (tokens + LOAD + solve_tokens(config)) / 1e6 + ppl_tokens(config)


# The exact solve's flops (Σ k³/3 at the mean k, k a row's kept weights) run this many times slower than a forward's
# matmuls: small batched Cholesky factorisations. bench/prune_lr.py's magnitude+refit pass over its floor, SmolLM2 at
# one thread on an AMD EPYC: 3.6 (219.5 s of solve against 28.8 s for 2 × 16 × 256 tokens)
SOLVE_SLOWDOWN = 3.6


def solve_tokens(config: RunConfig) -> float:
    """Tokens' worth of the exact layer-wise solve (refit, and ADMM's, which also iterates d_in-sized matmuls): it
    costs Σ k³/3 flops a matrix whatever the calibration set, 220 s of a SmolLM2 run (2,000 before its batches were
    sized by their largest row) beside ~225 s for the rest: priced by tokens alone, such a run read half its time."""
    if not (config.refit or config.criterion == "admm"):
        return 0.0
    from .config import parse_sparsity

    cubes, squares, params = _shapes(config.model)
    keep = 1 - parse_sparsity(config.sparsity)[0]
    per_token = 2 * params  # a forward's flops a token
    tokens = keep**3 * cubes / 3 / per_token * SOLVE_SLOWDOWN
    return tokens + (2 * config.admm_iters * squares / per_token if config.criterion == "admm" else 0.0)


@functools.cache
def _shapes(model: str) -> tuple[float, float, float]:
    """Σ d_out·d_in³, Σ d_out·d_in² and Σ d_out·d_in over the prunable matrices of the model's blocks (its shapes
    alone, from its config)."""
    from . import arch, models

    mats = [m.view(m.param) for b in arch.blocks(models.skeleton(model)) for m in arch.matrices(b).values()]
    return tuple(float(sum(w.shape[0] * w.shape[1] ** p for w in mats)) for p in (3, 2, 1))


# the grid's runs by what asked for them, each name → its label: a store can be whole for the paper's findings
# before the rest, and a grid pinned to one commit (make records REV=…) computes only the groups that are its
GROUPS = {"paper": "dense and findings 1-3", "baselines": "baselines (exact LR, ADMM, OWL)",
          "ladder": "calibration ladder", "early-stop": "finding 4"}


def group_of(profile: str) -> dict[str, str]:
    """Run key (the dense evaluations' too, which count with the paper's findings) → the GROUPS name it counts in."""
    out = {c.key(): "ladder" for m in grid(profile).models for c in ladder_cells(profile, m)}
    out |= {c.key(): "baselines" for cells in baseline_cells(profile).values() for c in cells}
    out |= {c.key(): "paper" for c in paper_runs(profile) + dense_runs(profile)}
    return {c.key(): out.get(c.key(), "early-stop") for c in runs(profile) + dense_runs(profile)}


def missing(profile: str, only: tuple[str, ...] = ()) -> list[tuple[str, RunConfig]]:
    """The runs not in the store, ("dense" | "run", config), in the pages' order (first model, seeds, finding 1
    first: a partial store is a useful one); `only`: those of these GROUPS."""
    from . import records

    if unknown := set(only) - set(GROUPS):
        raise ValueError(f"no group {', '.join(sorted(unknown))} in the grid: choose among {', '.join(GROUPS)}")
    todo = [("dense", c) for c in dense_runs(profile) if not records.dense_path(c).is_file()]
    todo += [("run", c) for c in runs(profile) if not records.path(c).is_file()]
    if not only:
        return todo
    groups = group_of(profile)
    return [(kind, c) for kind, c in todo if groups[c.key()] in only]


def label(kind: str, config: RunConfig) -> str:
    if kind == "dense":
        return f"{config.model} dense"
    sweep = ", ".join(f"{k} {getattr(config, k)}" for k in ("epochs", "n_calib", "self_gen", "extra_real", "holdout"))
    sweep += ", early stop" if config.early_stop else ""
    sweep += f"; perplexity on {config.max_eval_windows} × {config.eval_len}" if config.eval_len else ""
    sweep += f"; seq_len {config.seq_len}" if config.seq_len != base("cpu").seq_len else ""
    sweep += f"; sparsity {config.sparsity}" if config.sparsity != "0.5" else ""
    sweep += "; refit" if config.refit else ""
    sweep += f"; {config.allocation}" if config.allocation != "uniform" else ""
    return f"{config.model} {config.criterion} {config.recon} seed {config.seed} ({sweep})"
