"""`records verify` on another machine, simulated: the store's record is written by a subprocess whose MKL takes
its compatible code path (as the CPU of issue #20 did), then judged here."""

import os
from pathlib import Path

import pytest
import torch

from reconlib import criteria, models, pipeline, provenance, records, verify
from reconlib.config import profile

from conftest import interrupt_after

CONFIG = profile("smoke", criterion="wanda", recon="br+gp")

OTHER = {"MKL_CBWR": "COMPATIBLE"}  # another machine's kernels
needs_switch = pytest.mark.skipif(not verify.variants(), reason="this build has no other kernels to switch to")


def store(record: dict) -> str:
    records.write(records.path(CONFIG), record)
    return records.path(CONFIG).name


def as_if_from_another_machine(record: dict) -> dict:
    """A record computed here, labelled with the switched kernels' environment and sealed again."""
    body = {k: v for k, v in record.items() if k != "digest"}
    body["machine"] = {**body["machine"], "isa_variables": OTHER}
    return records.seal(body)


# the CPU of issue #20 (MKL's compatible path), and a CPU one ISA below this one, which moves MKL and torch's own
# kernels both (on an AVX512 machine: an AVX2-only CPU)
LOWER = {"MKL_ENABLE_INSTRUCTIONS": "AVX2",
         "ATEN_CPU_CAPABILITY": verify.ATEN_LOWER.get(torch.backends.cpu.get_cpu_capability())}
no_lower = pytest.mark.skipif(LOWER["ATEN_CPU_CAPABILITY"] is None, reason="torch's kernels have no lower ISA here")


@needs_switch
@pytest.mark.parametrize("writer", [OTHER, pytest.param(LOWER, marks=no_lower)], ids=["mkl-compatible", "isa-lower"])
def test_a_record_from_other_kernels_passes_within_the_measured_band(writer):
    other = verify.recompute_under(CONFIG.to_dict(), writer)
    assert other["machine"]["isa_variables"] == writer
    store(other)
    [row] = verify.verify(sample=1, profile="smoke")
    assert row["case"] == "other kernels" and row["failures"] == [] and row["flipped"] is None
    # the kernels really differed: bit-level agreement, the same-kernels tolerance, would have failed
    assert row["worst"] > verify.SAME_KERNELS
    assert row["worst"] <= row["band"]
    if writer is LOWER:  # too shallow a model to need it here; SmolLM2's block 29 needed it in the band
        assert {"ATEN_CPU_CAPABILITY": LOWER["ATEN_CPU_CAPABILITY"]} in verify.variants()


@needs_switch
def test_an_edited_number_fails_even_from_other_kernels():
    other = verify.recompute_under(CONFIG.to_dict(), OTHER)
    body = {k: v for k, v in other.items() if k != "digest"}
    body["test_block_error"]["ptb"][2] *= 1.02  # 2%: past the band, with a valid digest
    name = store(records.seal(body))
    with pytest.raises(ValueError, match=rf"record {name} does not reproduce \(other kernels\).*test_block_error\.ptb\[2\]"):
        verify.verify(sample=1, profile="smoke")
    store(body | {"digest": other["digest"]})  # and with its digest not renewed: the edit itself is named
    with pytest.raises(ValueError, match=f"record {name} was changed after it was written"):
        verify.verify(sample=1, profile="smoke")


@needs_switch
def test_a_changed_method_fails_from_other_kernels(monkeypatch):
    """The stored record came from another mask rule (Wanda compared over the whole matrix instead of per
    row): today's code, recomputed under both ISAs, agrees with itself and not with the record."""
    select = criteria.select
    with monkeypatch.context() as m:
        m.setattr(criteria, "select", lambda S, ratio, n, g, per_row=False: select(S, ratio, n, g, per_row=False))
        old = pipeline.compute(CONFIG, progress=False, resumable=False)
    name = store(as_if_from_another_machine(old))
    with pytest.raises(ValueError, match=rf"record {name} does not reproduce \(other kernels\): block_error"):
        verify.verify(sample=1, profile="smoke")


def test_the_same_kernels_are_judged_bit_tight():
    record = pipeline.compute(CONFIG, progress=False)
    assert verify.kernels(record) == verify.kernels(provenance.environment())
    body = {k: v for k, v in record.items() if k != "digest"}
    body["block_error"][0] *= 1 + 1e-7  # a rounding's worth: fine elsewhere, not on the machine that wrote it
    name = store(records.seal(body))
    with pytest.raises(ValueError, match=rf"record {name} does not reproduce \(same kernels\): block_error\[0\]"):
        verify.verify(sample=1, profile="smoke")


def test_a_record_without_a_machine_fingerprint_is_judged_as_from_other_kernels():
    old = {"machine": {"platform": "Linux", "cpus": 2, "gpu": None}, "versions": {"torch": torch.__version__}}
    assert verify.kernels(old) is None
    assert verify.judge({"block_error": [1.0]}, {"block_error": [1.0 + 1e-4]}, [{"block_error": [1.0 + 1.2e-4]}]) \
        | {"failures": []} == {"case": "other kernels", "numbers": 1, "worst": pytest.approx(1e-4, rel=1e-3),
                              "band": pytest.approx(verify.SPREAD * 2e-5, rel=1e-3), "worst_number": "block_error[0]",
                              "failures": []}
    # the band is the field's: SPREAD × the switch's largest difference in it, never below FLOOR
    moved = {"ppl": {"a": 10.0 * (1 + 2 * verify.FLOOR)}}
    row = verify.judge({"ppl": {"a": 10.0}}, moved, [moved])  # the switch moved nothing, the record moved 2 FLOOR
    assert row["band"] == verify.FLOOR and row["failures"]


def test_a_killed_audit_resumes_at_the_row_it_stopped_in(monkeypatch, tmp_path):
    """Two code versions in the store, so two rows. Killed after the first, the audit recomputes only the second;
    run again, it recomputes nothing and reports the same rows."""
    monkeypatch.setenv("RECONLIB_CACHE", str(tmp_path / "cache"))
    store(pipeline.compute(CONFIG, progress=False, resumable=False))
    older = CONFIG.replace(seed=1)
    body = {k: v for k, v in pipeline.compute(older, progress=False, resumable=False).items() if k != "digest"}
    records.write(records.path(older), records.seal(body | {"source_digest": "an older version"}))
    check, calls = verify.check, []
    monkeypatch.setattr(verify, "check", interrupt_after(check, 1, calls))
    with pytest.raises(KeyboardInterrupt):
        verify.audit(profile="smoke")
    assert len(calls) == 1
    monkeypatch.setattr(verify, "check", interrupt_after(check, 2, calls))
    rows = verify.audit(profile="smoke")
    assert len(calls) == 2  # only the row the kill interrupted
    assert sorted(r["source_digest"] for r in rows) == sorted([provenance.source_digest(), "an older version"])
    assert all(r["case"] == "same kernels" and r["failures"] == [] for r in rows)  # same machine: bit for bit
    monkeypatch.setattr(verify, "check", interrupt_after(check, 2, calls))  # a third call would raise
    assert verify.audit(profile="smoke") == rows
    # a record rewritten since (another digest; here, relabelled) is recomputed, not read from its kept row
    records.write(records.path(older), records.seal(body | {"source_digest": "a third version"}))
    monkeypatch.setattr(verify, "check", interrupt_after(check, 3, calls))
    assert "a third version" in {r["source_digest"] for r in verify.audit(profile="smoke")} and len(calls) == 3


@pytest.fixture
def two_threads():
    """This process at two threads (`make book`'s default on a 2-core machine), whatever OMP_NUM_THREADS says."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_record_is_recomputed_at_the_thread_count_that_wrote_it(two_threads):
    """`make records` writes at one thread a run, `make book` verifies at the machine's count (issue #37): the
    record reproduces bit for bit, and a number edited by a rounding's worth (digest renewed) still fails."""
    config = CONFIG.replace(criterion="sparsegpt", recon="br")  # its solver's sums depend on the thread count
    one = verify.recompute_under(config.to_dict(), {"OMP_NUM_THREADS": "1"})
    assert one["machine"]["threads"] == 1 and torch.get_num_threads() == 2
    here = pipeline.compute(config, progress=False, resumable=False)
    assert verify.judge(one, here)["failures"], "two threads gave the same bits as one: this test tests nothing"
    records.write(records.path(config), one)
    [row] = verify.verify(sample=1, profile="smoke")
    assert row["case"] == "same kernels" and row["failures"] == [] and row["worst"] == 0.0
    assert row["machine"]["threads"] == 1 and torch.get_num_threads() == 2  # and this process's count is restored

    body = {k: v for k, v in one.items() if k != "digest"}
    body["block_error"][1] *= 1 + 1e-7
    records.write(records.path(config), records.seal(body))
    name = records.path(config).name
    with pytest.raises(ValueError, match=rf"record {name} does not reproduce \(same kernels\): block_error\[1\]"):
        verify.verify(sample=1, profile="smoke")


def test_a_record_that_names_no_thread_count_is_recomputed_at_this_processs():
    assert verify.writers_threads({"machine": {"cpus": 2}}) is None
    before = torch.get_num_threads()
    with verify.at_threads(None):
        assert torch.get_num_threads() == before
    a, b = {"machine": {"cpu_capability": "X"}}, {"machine": {"cpu_capability": "X", "threads": 4}}
    assert verify.same_kernels(a, b) and not verify.same_kernels(b, {"machine": {"cpu_capability": "X", "threads": 1}})


def test_the_band_skips_mkls_path_for_this_cpus_own_isa_because_it_is_the_native_one(monkeypatch):
    import subprocess
    import sys

    from reconlib import provenance

    machine = provenance.machine()
    for isa, kept in (("AVX2", [{"MKL_CBWR": "COMPATIBLE"}]), ("AVX512", list(verify.VARIANTS))):  # any CPU's rule
        monkeypatch.setattr(provenance, "machine", lambda: machine | {"cpu_capability": isa,
                                                                   "blas": "Intel(R) oneAPI Math Kernel Library"})
        assert [v for v in verify.variants() if "MKL_CBWR" in v] == kept
    monkeypatch.undo()
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in {v["MKL_CBWR"] for v in verify.VARIANTS}:
        return  # the premise below is this CPU's to show: no MKL variant names its ISA
    code = ("import torch, hashlib; torch.manual_seed(0); a = torch.randn(300, 576); b = torch.randn(576, 1536); "
            "print(hashlib.sha256((a @ b).numpy().tobytes()).hexdigest())")

    def digest(env):
        return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, check=True).stdout

    assert digest({"MKL_CBWR": capability}) == digest({})  # the premise: that variant recomputes nothing new
    assert {"MKL_CBWR": capability} not in verify.variants()


def test_a_recomputation_runs_the_code_that_wrote_the_record_when_told(tmp_path, monkeypatch):
    monkeypatch.setenv("RECONLIB_CACHE", str(tmp_path / "cache"))
    # a stand-in checkout whose pipeline only says which code it is: the subprocess must import it, not the
    # reconlib of the working directory (`python -c` puts that first on the path, ahead of PYTHONPATH)
    package = tmp_path / "reconlib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text("def from_dict(d):\n    return d\n")
    (package / "pipeline.py").write_text("import os\ndef compute(config, progress, resumable):\n"
                                         "    return {'source_digest': 'the other checkout', 'config': config,\n"
                                         "            'cache': os.environ['RECONLIB_CACHE'], 'resumable': resumable}\n")
    fresh = verify.recompute_under({"no_such_field": 3}, {}, threads=1, code=tmp_path)  # today's from_dict refuses it
    assert fresh.pop("config") == {"no_such_field": 3} and fresh.pop("source_digest") == "the other checkout"
    # and it ran resumable, in a cache of its own: not the shared one, whose checkpoint of the same config is
    # another kernels' (deleted on sight), nor another variant's
    assert fresh["resumable"] and Path(fresh["cache"]).parent == models.cache_dir() / "variants"
    again = verify.recompute_under({"no_such_field": 3}, {}, threads=1, code=tmp_path)
    other = verify.recompute_under({"no_such_field": 3}, {"MKL_CBWR": "COMPATIBLE"}, threads=1, code=tmp_path)
    assert again["cache"] == fresh["cache"] != other["cache"]


def test_a_variants_cache_shares_the_model_files_and_streams_and_keeps_its_checkpoints_and_generated_text(
        tmp_path, monkeypatch):
    monkeypatch.setenv("RECONLIB_CACHE", str(tmp_path))
    one, two = verify.variant_cache({"MKL_CBWR": "COMPATIBLE"}), verify.variant_cache({"ATEN_CPU_CAPABILITY": "default"})
    for name in ("gguf", "models", "dense"):
        assert (one / name).resolve() == (two / name).resolve() == (models.cache_dir() / name).resolve()
    (one / "checkpoints" / "a-run").mkdir(parents=True)
    (one / "selfgen").mkdir()
    assert not (two / "checkpoints").exists() and not (two / "selfgen").exists()
    assert not (models.cache_dir() / "checkpoints" / "a-run").exists()


def test_code_of_a_record_is_none_for_todays_code_and_refuses_a_code_no_checkout_holds():
    assert provenance.code_of({"source_digest": provenance.source_digest()}) is None
    with pytest.raises(RuntimeError, match="names no commit.*`records verify`"):
        provenance.code_of({"key": "k", "source_digest": "0" * 16})
