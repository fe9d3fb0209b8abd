"""`RunConfig`: one object describes a run. It is the CLI surface, the notebook parameters and the
run record's key. Field names follow method.md (§2 criteria, §3 schemes and optimiser, §5 calibration)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields

CRITERIA = ("magnitude", "wanda", "sparsegpt")
BASELINES = ("admm",)  # criteria beyond the paper's (issue 39): the grid's finding 1 (over CRITERIA) leaves them out
ALLOCATIONS = ("uniform", "owl")
SCHEMES = ("lr", "br", "br+gp", "br+gp+cr")
CORPORA = ("wikitext2", "ptb", "c4", "wikitext2-valid", "boolq-passages")  # the corpora reconlib.data reads
TEST_SETS = ("wikitext2", "ptb", "c4", "boolq-passages")                   # perplexity and test-error sets
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class RunConfig:
    model: str = "smollm2-135m"         # an embedded name (smollm2-135m, gemma3-270m), a Hub id or a local HF folder
    criterion: str = "sparsegpt"        # what chooses each block's masks (method.md §2); admm (beyond the paper): mask
                                        # and weights together, ~11x SparseGPT's time (admm_iters)
    sparsity: str = "0.5"               # unstructured ratio in (0, 1), or "N:M" (keep N of every M)
    recon: str = "lr"                   # scheme (method.md §3): lr = the criterion alone; br = Adam per block; +gp
                                        # towards the dense stream; +cr on two-block units
    # A flag, not a fifth scheme: the scheme says what is trained after the masks, refit what the criterion hands
    # on, so the paper's LR keeps its name, keys and records, and refit also gives BR an exact start.
    refit: bool = False                 # exact LR: each linear's survivors refit by least squares to the dense layer's
                                        # output on the same sparse-stream inputs (refit.py); the paper's LR updates
                                        # none (magnitude, Wanda) or by OBS (SparseGPT). Cost: ~7 s more a SmolLM2
                                        # block at 50%, one thread (bench/prune_lr.py: 220 s over 30 blocks, where
                                        # magnitude's whole LR pass over 16 × 256 tokens takes 28 s)
    admm_iters: int = 20                # criterion admm (Boža 2024, admm.py): iterations of its weight update. Cost:
                                        # ~10 s a SmolLM2 block at 50%, one thread (bench/prune_lr.py: 311 s over 30
                                        # blocks), most of it the exact solve on the final mask
    admm_prune_iters: int = 15          # admm: the first K iterations re-choose the mask, on a cubic sparsity schedule
    admm_rho: float = 1.0               # admm: the penalty ρ of the splitting
    allocation: str = "uniform"         # each block's sparsity: uniform, or owl (Yin et al. 2024): fewer zeros where
                                        # more |W|·‖X‖ outliers, mean over blocks = sparsity, spread 2·owl_lambda;
                                        # costs one dense forward of the calibration windows first (~35 s on SmolLM2
                                        # in the cpu profile, a third of a SparseGPT LR run's pruning)
    owl_m: float = 5.0                  # owl: a score is an outlier above owl_m × the block's mean score
    owl_lambda: float = 0.08            # owl: block sparsities span sparsity ± about owl_lambda (2·owl_lambda in all)
    calib: str = "wikitext2-valid"      # a corpus name or a local .txt / .jsonl file or folder; the paper uses c4
    n_calib: int = 32                   # calibration windows (paper: 256)
    seq_len: int = 512                  # tokens per window (paper: 1024 calibration, 2048 evaluation)
    self_gen: int = 0                   # self-generated windows added for reconstruction (method.md §5)
    extra_real: int = 0                 # more real windows added for reconstruction only, as self_gen's are:
                                        # the masks stay those of the n_calib windows (finding 3's control)
    holdout: int = 0                    # held-out windows of the calibration corpus, disjoint from the trained ones and
                                        # never trained on: each unit's error on them (and on the trained windows) is
                                        # measured before training and after every epoch, the record's unit_curves;
                                        # costs a forward of the trained and held-out windows per epoch: a third of
                                        # the pruning time at 16 + 16 windows (seconds.monitor says)
    early_stop: bool = False            # each unit keeps the weights of its evaluation point (epoch 0 = none trained)
                                        # with the lowest held-out error; needs holdout > 0 (LR: nothing to stop)
    epochs: int = 10                    # Adam epochs per unit; 0 = LR
    lr: float = 2e-4                    # Adam's learning rate, decayed linearly to 0
    batch_size: int = 8                 # windows per forward and per Adam step
    seed: int = 0                       # draws the calibration windows and Adam's shuffling
    ppl: tuple = ("wikitext2", "ptb")   # perplexity sets evaluated after pruning
    test_error: tuple = ("wikitext2",)  # test sets whose windows measure the per-block test error
    n_test: int = 8                     # test windows per test_error set
    max_eval_windows: int = 0           # perplexity on K windows of each ppl set (the first K, or spread: eval_len);
                                        # 0 = the whole test set
    eval_len: int = 0                   # perplexity windows of this many tokens, the max_eval_windows of them (and
                                        # test_error's n_test windows) spread evenly over each whole test set, the same
                                        # for every run; 0 = the earlier protocol: the first windows, of seq_len tokens
    zeroshot: tuple = ()                # zero-shot tasks evaluated after pruning
    zeroshot_limit: int = 0             # first K items of each zero-shot task; 0 = all items
    device: str = "auto"                # auto = cuda when available
    dtype: str = "auto"                 # autocast dtype of the blocks: auto = bfloat16 on a GPU, float32 (none) on
                                        # a CPU; bfloat16 / float16 on either; float16 trains with loss scaling
    sequential: bool = False            # prune a block's linears in forward order, one forward of all windows

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in ("ppl", "test_error", "zeroshot"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            set_(name, tuple(value))
        set_("sparsity", canonical_sparsity(self.sparsity))
        self.validate()

    def validate(self):
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)

        need(self.criterion in CRITERIA + BASELINES,
             f"unknown criterion {self.criterion!r}: use one of {', '.join(CRITERIA + BASELINES)}")
        need(self.recon in SCHEMES, f"unknown recon scheme {self.recon!r}: use one of {', '.join(SCHEMES)}")
        self._validate_baselines(need)
        need(self.calib in CORPORA or _is_local(self.calib),
             f"unknown calibration corpus {self.calib!r}: use one of {', '.join(CORPORA)}, or the path of an "
             "existing .txt file, .jsonl file (one {\"text\": ...} a line) or folder of .txt files")
        for name in ("ppl", "test_error"):
            bad = [c for c in getattr(self, name) if c not in TEST_SETS]
            need(not bad, f"unknown test set {bad} in {name}: use names from {', '.join(TEST_SETS)}")
        check_contamination(self.calib, self.zeroshot, "drop boolq from zeroshot or calibrate on wikitext2-valid, "
                            "c4 or a local corpus")
        for name in ("seq_len", "batch_size", "n_test"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                 f"{name} must be a positive integer, got {getattr(self, name)!r}")
        need(isinstance(self.n_calib, int) and self.n_calib >= 0, f"n_calib must be an integer ≥ 0, got {self.n_calib!r}")
        # magnitude LR reads the weights alone: without windows it runs no data and records no error curve
        need(self.n_calib > 0 or (self.criterion == "magnitude" and self.recon == "lr" and not self.self_gen
                                  and not self.test_error),
             f"n_calib=0 (no calibration data) is only for magnitude LR without test_error, got criterion="
             f"{self.criterion!r}, recon={self.recon!r}, test_error={list(self.test_error)}: raise n_calib, or use "
             "criterion='magnitude', recon='lr', test_error=''")
        need(isinstance(self.sequential, bool), f"sequential must be true or false, got {self.sequential!r}")
        need(isinstance(self.early_stop, bool), f"early_stop must be true or false, got {self.early_stop!r}")
        for name in ("self_gen", "extra_real", "holdout", "epochs", "max_eval_windows", "zeroshot_limit", "eval_len"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                 f"{name} must be an integer ≥ 0, got {getattr(self, name)!r}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.n_calib == 0 or self.batch_size <= self.n_calib + self.self_gen + self.extra_real,
             f"batch_size {self.batch_size} is larger than the calibration set ({self.n_calib} + {self.self_gen} "
             f"+ {self.extra_real} windows): lower batch_size or raise n_calib")
        need(self.eval_len != 1, "eval_len=1 leaves no token to score: use 0 (seq_len windows) or e.g. 512")
        need(self.n_calib > 0 or not self.extra_real, "extra_real adds real windows to n_calib's: raise n_calib")
        need(self.n_calib > 0 or not self.holdout, "holdout windows are drawn beside n_calib's: raise n_calib")
        # (LR trains nothing, so there early_stop changes nothing, as epochs do not)
        need(not self.early_stop or self.holdout > 0,
             "early_stop chooses among a unit's epochs by its error on held-out windows: set holdout > 0 (e.g. 16)")
        need(self.recon == "lr" or self.epochs > 0,
             f"recon={self.recon!r} trains by Adam and needs epochs ≥ 1 (epochs=0 is recon='lr')")
        need(self.device in ("auto", "cpu") or self.device.startswith("cuda"),
             f"device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")
        need(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    def _validate_baselines(self, need):
        """Issue 39's fields: the exact LR, ADMM and OWL."""
        need(isinstance(self.refit, bool), f"refit must be true or false, got {self.refit!r}")
        need(not (self.refit and self.criterion == "admm"),
             "criterion='admm' already ends with the least-squares solve on its mask: drop refit")
        for name in ("admm_iters", "admm_prune_iters"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                 f"{name} must be an integer ≥ 0, got {getattr(self, name)!r}")
        need(self.admm_prune_iters <= self.admm_iters,
             f"admm_prune_iters ({self.admm_prune_iters}) re-choose the mask within the admm_iters "
             f"({self.admm_iters}) iterations: lower admm_prune_iters or raise admm_iters")
        need(self.admm_rho > 0, f"admm_rho must be > 0, got {self.admm_rho}")
        need(self.allocation in ALLOCATIONS, f"unknown allocation {self.allocation!r}: use one of {', '.join(ALLOCATIONS)}")
        need(self.n_calib > 0 or not (self.refit or self.allocation == "owl"),
             "refit and allocation='owl' read calibration activations: raise n_calib")
        if self.allocation == "owl":
            ratio, _, group = parse_sparsity(self.sparsity)
            need(not group, f"allocation='owl' spreads an unstructured ratio, and {self.sparsity} fixes every group's: "
                 "use a ratio such as sparsity=0.7, or allocation='uniform'")
            need(self.owl_m > 0, f"owl_m must be > 0, got {self.owl_m}")
            need(0 <= 2 * self.owl_lambda < min(ratio, 1 - ratio),
                 f"owl_lambda={self.owl_lambda} would push a block's sparsity out of (0, 1) around {ratio}: "
                 f"use 0 ≤ owl_lambda < {min(ratio, 1 - ratio) / 2:.3g}")

    @property
    def pattern(self) -> tuple[float, int, int]:
        """(ratio, n_keep, group): N:M gives (1 - N/M, N, M); unstructured gives (ratio, 0, 0)."""
        return parse_sparsity(self.sparsity)

    @property
    def placement(self):
        """(torch.device, the autocast dtype of the blocks' forward and backward, None for plain fp32). `auto` is
        bf16 on a GPU and fp32 on a CPU, where bf16 matmuls are ~100× slower without AMX; an explicit dtype is
        honoured on either. The blocks' parameters, Adam's state and the streams stay fp32 whatever the dtype."""
        import torch

        name = "cuda" if self.device == "auto" and torch.cuda.is_available() else "cpu" if self.device == "auto" \
            else self.device
        device = torch.device(name)
        dtype = ("bfloat16" if device.type == "cuda" else "float32") if self.dtype == "auto" else self.dtype
        return device, {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}[dtype]

    @property
    def eval_window(self) -> int:
        """Tokens in a perplexity window: eval_len, where set, else the calibration's seq_len."""
        return self.eval_len or self.seq_len

    @property
    def train_epochs(self) -> int:
        """LR is the criterion alone: no gradient step (method.md §3)."""
        return 0 if self.recon == "lr" else self.epochs

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @property
    def calib_digest(self) -> str | None:
        """A local calibration corpus is known by its content (sha256), not its path; None for a named one."""
        from .data import digest

        return None if self.calib in CORPORA else digest(self.calib)

    def key(self) -> str:
        """A stable hash of every field (a local corpus by its digest): the run record's file name."""
        values = self.to_dict()
        for name, default in ADDED.items():  # so records written before the field existed keep their keys
            if values[name] == default:
                del values[name]
        if self.calib not in CORPORA:
            values["calib"] = f"sha256:{self.calib_digest}"
        blob = json.dumps(values, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **overrides) -> "RunConfig":
        return from_dict({**self.to_dict(), **overrides})


ADDED = {"sequential": False, "extra_real": 0, "holdout": 0, "early_stop": False, "eval_len": 0}  # fields added after records were first committed, left out of key() at their default

ADDED |= {"refit": False, "admm_iters": 20, "admm_prune_iters": 15, "admm_rho": 1.0, "allocation": "uniform",
          "owl_m": 5.0, "owl_lambda": 0.08}  # issue 39's


def check_contamination(calib: str, tasks, fix: str, who: str = "calib='boolq-passages'") -> None:
    """BoolQ's passages are BoolQ's own text: calibrating on them and scoring BoolQ reads the answers."""
    if calib == "boolq-passages" and "boolq" in tasks:
        raise ValueError(f"{who} is BoolQ's own text, so BoolQ accuracy after calibrating on it is contaminated: {fix}")


def _is_local(corpus: str) -> bool:
    from .data import is_local

    return is_local(corpus)


def parse_sparsity(sparsity) -> tuple[float, int, int]:
    text = str(sparsity).strip()
    if ":" in text:
        try:
            n_keep, group = (int(t) for t in text.split(":"))
        except ValueError:
            raise ValueError(f"sparsity {text!r} is not N:M with integers N < M, e.g. '2:4'") from None
        if not 0 < n_keep < group:
            raise ValueError(f"sparsity {text!r}: N:M needs 0 < N < M (keep N of every M), e.g. '2:4' or '4:8'")
        return 1 - n_keep / group, n_keep, group
    try:
        ratio = float(text)
    except ValueError:
        raise ValueError(f"sparsity {text!r} is neither a ratio in (0, 1) nor N:M such as '2:4'") from None
    if not 0 < ratio < 1:
        raise ValueError(f"sparsity must lie in (0, 1), got {ratio}; use e.g. 0.5 for 50% zeros")
    return ratio, 0, 0


def canonical_sparsity(sparsity) -> str:
    ratio, n_keep, group = parse_sparsity(sparsity)
    return f"{n_keep}:{group}" if group else repr(float(ratio))


def from_dict(values: dict) -> RunConfig:
    """Build a config, rejecting unknown keys by listing the valid ones."""
    names = [f.name for f in fields(RunConfig)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}: valid fields are {', '.join(names)}")
    return RunConfig(**values)


# Layered overrides for notebooks and `make book PROFILE=…` (the base is RunConfig's defaults); which models
# and seeds each profile's book reads is reconlib.grid's.
PROFILES = {
    # tiny random model: seconds per notebook, for tests
    "smoke": dict(model="tiny-llama", n_calib=8, seq_len=32, epochs=2, batch_size=2, n_test=2,
                  test_error=("wikitext2", "ptb"), max_eval_windows=2, ppl=("wikitext2", "ptb")),
    # the embedded models on 2 CPU cores: 64 × 128 = 8,192 calibration tokens (the paper: 256 × 1024), batch 2
    # for 2 epochs = 64 Adam steps a unit (the paper: 320), so lr 1e-3 (the paper: 2e-4) moves the survivors
    # about as far (lr × steps). Test error on 32 windows a test set; perplexity on the first 32 windows.
    "cpu": dict(model="smollm2-135m", calib="wikitext2-valid", n_calib=64, seq_len=128, epochs=2, batch_size=2,
                lr=1e-3, n_test=32, test_error=("wikitext2", "ptb"), max_eval_windows=32, ppl=("wikitext2", "ptb")),
    # the paper's setting (method.md §3, §5): a GPU and the Hub
    "paper": dict(model="facebook/opt-125m", calib="c4", n_calib=256, seq_len=1024, epochs=10, batch_size=8,
                  n_test=32, test_error=("wikitext2", "ptb", "c4"), max_eval_windows=0, ppl=("wikitext2", "ptb", "c4")),
}


def profile(name: str, **overrides) -> RunConfig:
    """The profile's config with overrides on top; an override of None keeps the profile's value."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)}")
    return from_dict({**PROFILES[name], **{k: v for k, v in overrides.items() if v is not None}})


def field_help() -> dict[str, str]:
    """Each field's comment in RunConfig's source (continuation lines joined): the one place that says what a field
    means, read by the CLI's --help, so the two cannot drift."""
    import inspect
    import re

    out, name = {}, None
    for line in inspect.getsource(RunConfig).splitlines():
        if m := re.match(r"\s{4}(\w+): [^=]+=[^#]*#\s?(.*)", line):
            name, out[m.group(1)] = m.group(1), m.group(2).strip()
        elif name and (m := re.match(r"\s+#\s?(.*)", line)):
            out[name] += " " + m.group(1).strip()
        else:
            name = None
    return out


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]
