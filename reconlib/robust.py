"""Would a verdict survive a reviewer's four questions? Each check reruns the verdict rule (stats.verdicts, through
the finding's own function) on altered rows, and a verdict that survives all four is **robust**:

1. **exact test**: the sign-flip (randomization) p of each deciding part agrees with the t-test's word, and the
   seeds are enough for an exact test to reach that word at all (n ≥ 5 for one-sided α = 0.05: 2⁻⁵ = 1/32);
2. **one seed less**: removing any one seed leaves the verdict as it is;
3. **other windows**: a bootstrap over the evaluation windows (the same draw for every run, since every run reads
   the same windows) keeps it in at least KEEP of the draws;
4. **kernels**: moving one arm's metrics, each by the spread kernel code paths make in it (`records band` measures
   it per metric; verify.py has the variants), in the worse direction, leaves the verdict as it is. The smallest
   uniform shift that flips it is given beside, for scale.

A verdict is given as (rows, the finding's verdict function, the column its arms differ in): `findings.recipes`.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats

KEEP = 0.95      # share of window draws that must keep the verdict
DRAWS = 200      # window draws per verdict: the keep share's standard error is then ≤ 3.5% (1.5% near KEEP)
SHARE = 0.10     # the most of a change's variance that which-windows may take (the evaluation's size: grid.py)
BAND = Path(__file__).resolve().parents[1] / "book" / "kernel_band.json"


# ------------------------------------------------------------------ 1. the exact test
def sign_flip(effects) -> tuple[float, float]:
    """Exact one-sided p of mean(effects) > 0 (and < 0) over all 2ⁿ sign assignments: no normality assumed,
    and no p below 2⁻ⁿ whatever the effect."""
    e = np.asarray(effects, dtype=float)
    if len(e) == 0:
        return math.nan, math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(e))))  # (2ⁿ, n)
    means, observed = signs @ e, e.sum()
    tol = 1e-12 * max(1.0, abs(observed))
    return float((means >= observed - tol).mean()), float((means <= observed + tol).mean())


def seeds_needed(word: str, parts: int) -> int:
    """The fewest seeds at which the sign-flip test can say `word`: 2⁻ⁿ < α for holds (each part at α), 2⁻ⁿ ≤ α / parts
    for does not hold (Holm's first step). A null (not separable) needs as many as a holds could have."""
    level = stats.ALPHA / parts if word == stats.FAILS else stats.ALPHA
    return math.ceil(math.log2(1 / level) + 1e-9)


def exact(v: dict) -> dict:
    """The deciding parts' sign-flip p against the verdict's word → {p: {part: p}, needed, n, agrees}."""
    parts = list(v["tests"].values())
    tested = [p for p in parts if p.test.n]
    n = min((p.test.n for p in tested), default=0)
    flips = {p.name: sign_flip([p.direction * c for c in p.changes]) for p in tested}
    if v["verdict"] == stats.HOLDS:
        p = {k: f[0] for k, f in flips.items()}
        agrees = all(x < stats.ALPHA for x in p.values())
    elif v["verdict"] == stats.FAILS:
        p = {k: f[1] for k, f in flips.items()}
        agrees = any(stats.holm(list(p.values())))
    else:
        p = {k: f[0] for k, f in flips.items()}
        agrees = not all(x < stats.ALPHA for x in p.values()) and not any(stats.holm([f[1] for f in flips.values()]))
    return {"p": p, "needed": seeds_needed(v["verdict"], len(parts)), "n": n, "agrees": agrees}


# ------------------------------------------------------------------ 2. one seed less
def leave_one_out(df: pd.DataFrame, verdict) -> list:
    """The seeds without which the verdict changes."""
    word = verdict(df)["verdict"]
    return [s for s in sorted(df.seed.unique()) if verdict(df[df.seed != s])["verdict"] != word]


# ------------------------------------------------------------------ 3. other windows
def _windows(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """metric → (rows, windows) matrix of per-window values, for the metrics every row has windows of."""
    if "windows" not in df or not len(df):
        return {}
    metrics = set.intersection(*(set(w) for w in df.windows))
    out = {}
    for m in sorted(metrics):
        lengths = {len(w[m]) for w in df.windows}
        if len(lengths) == 1:
            out[m] = np.array([w[m] for w in df.windows], dtype=float)
    return out


def _aggregate(metric: str, values: np.ndarray) -> np.ndarray:
    """The metric from its windows (rows, W): perplexity is exp of the mean NLL, a test error the mean error."""
    return np.exp(values.mean(1)) if metric.startswith("ppl_") else values.mean(1)


def part_metric(name: str) -> str | None:
    """The metric a verdict's part reads, from its name ("WikiText-2 perplexity, BR+GP → BR+GP+CR", "wanda BR+GP:
    WikiText-2 perplexity, uniform → OWL"); finding 1 names the calibration error "<criterion> final error,
    LR → BR". None where it names none. No metric's label is part of another's."""
    from .findings import METRICS

    named = next((m for m, label in METRICS.items() if label in name), None)
    return named or ("final_error" if "final error" in name else None)


def _read_windows(df: pd.DataFrame, v: dict) -> dict[str, np.ndarray]:
    """_windows of only the metrics the verdict's parts read (finding 1 reads the calibration error, which has
    no windows)."""
    read = {part_metric(name) for name in v["tests"]}
    return {m: x for m, x in _windows(df).items() if m in read}


def window_draws(df: pd.DataFrame, verdict, draws: int = DRAWS, seed: int = 0) -> dict:
    """The verdict on `draws` bootstraps of the evaluation windows → {keep (share of draws with the same verdict),
    share: {part: the share of its mean change's variance that comes from which windows}, metrics: resampled}."""
    v = verdict(df)
    matrices = _read_windows(df, v)
    if not matrices:
        return {"keep": 1.0, "share": {}, "metrics": []}
    rng = np.random.default_rng(seed)
    kept, means = 0, {name: [] for name in v["tests"]}
    for _ in range(draws):
        d = df.copy()
        for m, values in matrices.items():
            d[m] = _aggregate(m, values[:, rng.integers(0, values.shape[1], values.shape[1])])
        w = verdict(d)
        kept += w["verdict"] == v["verdict"]
        for name, part in w["tests"].items():
            if part.changes:
                means[name].append(float(np.mean(part.changes)))
    share = {}
    for name, part in v["tests"].items():
        if len(part.changes) > 1 and part_metric(name) in matrices:
            window_var, seed_var = float(np.var(means[name], ddof=1)), float(np.var(part.changes, ddof=1))
            total = window_var + seed_var / len(part.changes)
            share[name] = window_var / total if total > 0 else 0.0  # identical runs: nothing varies
    return {"keep": kept / draws, "share": share, "metrics": sorted(matrices)}


# ------------------------------------------------------------------ 3'. how many windows
def window_changes(df: pd.DataFrame, verdict) -> dict[str, np.ndarray]:
    """part → its (seeds, windows) per-window changes, whose mean over the windows is each seed's change.

    Each run's metric is replaced by one window's share of it, linearized so that the windows' mean is the
    metric itself: a test error's window as it is, a perplexity's P · (1 + nll_w − mean nll) (first order of
    exp around the mean NLL; a window's own exp(nll_w) would weigh hard windows by their perplexity)."""
    v = verdict(df)
    matrices = _read_windows(df, v)
    per = {}
    for m, x in matrices.items():
        full = _aggregate(m, x)
        linear = full[:, None] * (1 + x - x.mean(1, keepdims=True)) if m.startswith("ppl_") else x
        names = [name for name in v["tests"] if part_metric(name) == m]
        columns = {name: [] for name in names}
        for w in range(x.shape[1]):
            tests = verdict(df.assign(**{m: linear[:, w]}))["tests"]
            for name in names:
                columns[name].append(tests[name].changes)
        per |= {name: np.array(c, dtype=float).T for name, c in columns.items() if len(c[0]) > 1}
    return per


def two_way(c: np.ndarray) -> tuple[float, float, float]:
    """A (seeds, windows) table of changes c_sw = μ + a_s + b_w + e_sw → the variances (σ_a², σ_b², σ_e²) of the
    seed effect, the window effect and their interaction, by the two-way ANOVA's expected mean squares (each
    clipped at zero)."""
    n, w = c.shape
    seed, window, mean = c.mean(1), c.mean(0), c.mean()
    e = c - seed[:, None] - window[None, :] + mean
    ms_e = float((e ** 2).sum() / ((n - 1) * (w - 1)))
    ms_seed, ms_window = w * float(seed.var(ddof=1)), n * float(window.var(ddof=1))
    return max(0.0, (ms_seed - ms_e) / w), max(0.0, (ms_window - ms_e) / n), ms_e


def share_at(var: tuple[float, float, float], n: int, windows: int, population: int | None = None) -> float:
    """The share window_draws measures, predicted at n seeds and `windows` windows drawn from a test set of
    `population` (None: unbounded). Which windows moves the mean change by (σ_b² + σ_e²/n)/W, shrunk by the
    finite-population factor 1 − W/N (the whole set leaves nothing to choose); the seeds by (σ_a² + σ_e²/W)/n,
    since a seed's change also carries its own windows' noise. Only the seeds' σ_a² does not shrink with W, so
    when the seeds agree the share stays high at any W short of the whole set."""
    a, b, e = var
    window = (b + e / n) / windows * (1 - windows / population if population else 1.0)
    seeds = (a + e / windows) / n
    return window / (window + seeds) if window + seeds > 0 else 0.0


def windows_needed(var: tuple[float, float, float], n: int, population: int | None = None,
                   share: float = SHARE) -> int | None:
    """The fewest windows W at which share_at(W) ≤ share (at most the population, where it is 0); None when no
    finite W will do (no population given and the seeds agree). Solves (σ_b² + σ_e²/n)(1/W − 1/N) ≤
    r (σ_a² + σ_e²/W) / n for W, with r = share / (1 − share)."""
    a, b, e = var
    r, q = share / (1 - share), b + e / n
    top, bottom = n * q - r * e, r * a + (n * q / population if population else 0.0)
    if top <= 0:
        return 1
    return math.ceil(top / bottom) if bottom > 0 else None


def sizing(df: pd.DataFrame, verdict, population=None) -> dict[str, dict]:
    """How many windows each part with evaluation windows would need for its share to be at most SHARE, at the
    seeds it has now → part → {metric, n, windows (now), length (tokens a window), share (share_at now), needed
    (windows_needed), population}. population(metric, tokens a window) → how many windows the metric's whole
    test set holds (None: unbounded)."""
    out = {}
    for name, c in window_changes(df, verdict).items():
        metric = part_metric(name)
        lengths = {w[metric] for w in df.window_len} if "window_len" in df else set()
        var, (n, w) = two_way(c), c.shape
        length = lengths.pop() if len(lengths) == 1 else None
        population_ = population(metric, length) if population and length else None
        out[name] = {"metric": metric, "n": n, "windows": w, "length": length, "share": share_at(var, n, w, population_),
                     "needed": windows_needed(var, n, population_), "population": population_}
    return out


# ------------------------------------------------------------------ 4. kernels
def _metrics(df: pd.DataFrame) -> list[str]:
    from .findings import METRICS

    return [m for m in METRICS if m in df.columns]


def flip_shift(df: pd.DataFrame, verdict, key: str, largest: float = 1.0) -> tuple[float, str | None]:
    """The smallest relative shift δ of one arm's metrics (every seed's, all metrics at once, either sign) that
    changes the verdict, and that arm; (inf, None) when none up to `largest` does. Bisection on |δ| per arm and
    sign, from a grid that brackets the first flip."""
    word, metrics = verdict(df)["verdict"], _metrics(df)

    def flips(arm, delta: float) -> bool:
        if delta <= -1:  # an error or a perplexity at zero or below is no run's: relative changes divide by it
            return False
        d = df.copy()
        rows = d[key] == arm
        d.loc[rows, metrics] = d.loc[rows, metrics] * (1 + delta)
        return verdict(d)["verdict"] != word

    best, where = math.inf, None
    grid_ = np.geomspace(1e-4, largest, 17)  # ×1.78 a step, then 8 halvings of the log-interval: ±0.3%
    for arm in df[key].unique():
        for sign in (1, -1):
            hit = next((x for x in grid_ if flips(arm, sign * x)), None)
            if hit is None or hit >= best:
                continue
            lo, hi = hit / grid_[1] * grid_[0], hit  # the grid's previous point did not flip
            for _ in range(8):
                mid = math.sqrt(lo * hi)
                lo, hi = (lo, mid) if flips(arm, sign * mid) else (mid, hi)
            best, where = hi, arm
    return best, where


def measure_band(profile: str, sample: int = 2, progress: bool = False) -> dict:
    """For each model: the `sample` cheapest stored runs of finding 2's cross-block arm that this machine's kernels
    wrote (those measured before first), recomputed in subprocesses at their writer's thread count under each
    kernel variant (verify.variants: MKL's other code paths, torch's kernels one ISA lower) → the largest relative
    difference any variant makes in a metric a verdict reads. Written to BAND after each recomputation (an hour
    each), which a rerun resumes."""
    from tqdm.auto import tqdm

    from . import findings, grid, provenance, records, verify

    out = json.loads(BAND.read_text()) if BAND.is_file() else {}
    here = verify.kernels(provenance.environment())
    for model in grid.grid(profile).models:
        arm = [c for c in grid.overfitting_cells(profile, model) if c.recon == "br+gp+cr"]
        # a record of other kernels would add the two machines' difference to the variants' own
        ours = [r for r in (records.stored(c) for c in arm) if r and verify.kernels(r) == here]
        if not ours:
            continue
        entry = out.setdefault(model, {})
        done = entry.setdefault("recomputed", {})  # record key → variant → metric → relative difference
        # by the code that wrote the record, so that the kernels are the one thing that differs; a difference
        # measured by other code (before `code` was kept) carries that code's changes too, and is measured again
        code = entry.setdefault("code", {})  # record key → the source_digest that recomputed it
        dropped = [k for k in done if code.get(k) != (records.read(records.results_dir() / f"{k}.json") or {})
                   .get("source_digest")]
        for key in dropped:
            done.pop(key), code.pop(key, None)
        # the records measured before stay in the sample, so that a cheaper run landing later costs no hour again
        stored = sorted(ours, key=lambda r: (r["key"] not in done, r["seconds"]["total"]))[:sample]
        sampled = [r["key"] for r in stored]
        todo = [(r, env) for r in stored for env in verify.variants() if _name(env) not in done.get(r["key"], {})]
        for r, env in tqdm(todo, desc=f"band {model}", disable=not progress):
            mine = findings.row(r, 0)
            fresh = verify.recompute_under(r["config"], env, verify.writers_threads(r), provenance.code_of(r),
                                           progress=progress)
            code[r["key"]] = fresh["source_digest"]
            theirs = findings.row(fresh, 0)
            done.setdefault(r["key"], {})[_name(env)] = {
                m: abs(mine[m] - theirs[m]) / max(abs(mine[m]), abs(theirs[m]), 1e-12)
                for m in _metrics(pd.DataFrame([mine]))}
            _summarize(entry, findings.kernel_path(r["machine"]), sampled)
            BAND.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        if dropped and not todo:  # what the dropped measurements leave
            _summarize(entry, entry.get("cpu"), sampled)
            BAND.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def _summarize(entry: dict, cpu: str | None, sampled: list[str]) -> None:
    """The band of one model's entry from its recomputations: per metric, the largest difference any made;
    `complete` once every sampled record has every variant (a part of them is only a lower bound on the band)."""
    done = entry["recomputed"]
    entry["complete"] = all(_name(env) in done.get(k, {}) for k in sampled for env in _variants())
    per_metric = {}
    for diffs in (d for by_env in done.values() for d in by_env.values()):
        for m, d in diffs.items():
            per_metric[m] = max(per_metric.get(m, 0.0), d)
    for k in ("band", "per_metric", "records", "variants"):
        entry.pop(k, None)
    if per_metric:
        entry |= {"band": max(per_metric.values()), "per_metric": per_metric, "records": sorted(done),
                  "variants": sorted({e for by_env in done.values() for e in by_env}),
                  "cpu": cpu, "measured": pd.Timestamp.now().strftime("%Y-%m-%d")}


def _variants() -> list[dict]:
    from . import verify

    return verify.variants()


def _name(env: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))


def band(model: str) -> dict[str, float] | None:
    """metric → the largest relative difference kernel code paths make in it in a cross-block run of `model`, as
    `records band` measured it (None: not measured yet). Metrics move unequally: on SmolLM2 MKL's compatible path
    moved the calibration error 6.9% and perplexity 0.5%, so each is set against its own."""
    if not BAND.is_file():
        return None
    entry = json.loads(BAND.read_text()).get(model, {})
    # some variants still to recompute: not a band to call a verdict robust by (an entry that keeps `code` but not
    # `complete` was written before completeness was: unknown, so not complete)
    if not entry.get("complete", "code" not in entry):
        return None
    return entry.get("per_metric") or ({m: entry["band"] for m in _all_metrics()} if "band" in entry else None)


def _all_metrics() -> list[str]:
    from .findings import METRICS

    return list(METRICS)


def _read(v: dict, metrics) -> list[str]:
    """The metrics among `metrics` that the verdict's parts read, by the part's name: finding 1 names the
    calibration error "<criterion> final error, LR → BR"; a verdict whose parts name none reads them all
    (the widest band then applies: never a band of 0 by a name missed)."""
    metrics = list(metrics)
    read = [m for m in metrics if any(part_metric(name) == m for name in v["tests"])]
    return read or metrics


def flip_within_band(df: pd.DataFrame, verdict, key: str, bands: dict[str, float]) -> str | None:
    """The arms whose metrics, each moved by its own kernel band in the worse direction (every combination of
    signs over the metrics the verdict reads), change the verdict, as "a or b"; None when no arm's do. All of
    them, since a reader weighs "moving LR" (a run without training) apart from "moving BR+GP+CR"."""
    v = verdict(df)
    metrics = [m for m in _read(v, _metrics(df)) if m in bands]

    def flips(arm) -> bool:
        for signs in itertools.product((1, -1), repeat=len(metrics)):
            d = df.copy()
            rows = d[key] == arm
            for m, sign in zip(metrics, signs):
                d.loc[rows, m] = d.loc[rows, m] * (1 + sign * bands[m])
            if verdict(d)["verdict"] != v["verdict"]:
                return True
        return False
    return " or ".join(str(arm) for arm in df[key].unique() if flips(arm)) or None


# ------------------------------------------------------------------ together
def assess(df: pd.DataFrame, verdict, key: str, model: str, draws: int = DRAWS) -> dict:
    """The four checks of one verdict → {robust, reasons (in words, empty when robust), and each check's numbers}."""
    v = verdict(df)
    if v["verdict"] == stats.NONE:  # no runs: nothing to check
        return {"finding": v["finding"], "verdict": v["verdict"], "robust": False, "reasons": [stats.NONE]}
    out = {"finding": v["finding"], "verdict": v["verdict"], "exact": exact(v), "loo": leave_one_out(df, verdict),
           "windows": window_draws(df, verdict, draws), "shift": flip_shift(df, verdict, key)}
    bands = band(model)
    read = _read(v, bands or {})
    # the widest band among what the verdict reads, for the page; the check moves each metric by its own
    out["band"] = max((bands[m] for m in read), default=0.0) if bands is not None else None
    reasons = []
    e = out["exact"]
    if e["n"] < e["needed"]:
        reasons.append(f"n = {e['n']}: an exact test needs {e['needed']} seeds to say this")
    elif not e["agrees"]:
        reasons.append("the exact sign-flip test says otherwise")
    if out["loo"]:
        reasons.append(f"changes without seed {', '.join(map(str, out['loo']))}")
    if out["windows"]["keep"] < KEEP:
        reasons.append(f"{100 * out['windows']['keep']:.0f}% of window draws keep it")
    delta, arm = out["shift"]
    if out["band"] is None:
        reasons.append("kernel band not measured yet")
    elif (arm := flip_within_band(df, verdict, key, bands)) is not None:
        reasons.append(f"moving {arm} within the kernel band (up to {100 * out['band']:.2g}%) flips it")
    return out | {"robust": not reasons, "reasons": reasons}


def word(a: dict) -> str:
    """robust, or fragile with its reasons."""
    return "robust" if a["robust"] else stats.NONE if a["reasons"] == [stats.NONE] else "fragile: " + "; ".join(a["reasons"])


def primary_holm(verdicts: list[dict]) -> list[dict]:
    """Holm across the book: every verdict's primary part (findings.primary) gets a two-sided paired t-test, and a
    decided verdict survives when Holm over all of them (each finding × model with two seeds or more) rejects
    its part's null in the verdict's direction → the surviving verdicts."""
    from .findings import primary

    tested = [(v, v["tests"][primary(v)]) for v in verdicts
              if primary(v) in v["tests"] and v["tests"][primary(v)].test.n >= 2]  # absent: not measured yet
    rejected = stats.holm([2 * min(p.test.p, p.test.p_opposite) for _, p in tested])
    return [v for (v, p), r in zip(tested, rejected)
            if r and (v["verdict"], p.test.p < p.test.p_opposite) in ((stats.HOLDS, True), (stats.FAILS, False))]
