"""Claims on a store's runs (reconlib.claims): grids sharing a store compute each run once between them, and a
claim whose holder is gone (killed, rebooted, or silent on another host) blocks nothing."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconlib import claims, grid, parallel, provenance, records

# A grid process of the smoke profile's `n` cheapest runs (no dense ones), started on a signal: it imports, says it
# is ready, waits for `go`, computes, and prints the keys it computed.
GRID = """
import json, sys, time
from pathlib import Path
from reconlib import grid, parallel
runs = sorted(grid.runs("smoke"), key=grid.cost)[:int(sys.argv[1])]
grid.runs, grid.dense_runs = (lambda profile: runs), (lambda profile: [])
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
print(json.dumps([c.key() for _, c, _ in parallel.compute("smoke", workers=1, progress=False)]))
"""


def start_grid(tmp_path: Path, name: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", GRID, str(n), str(tmp_path / f"ready-{name}"), str(tmp_path / "go")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


def wait_for(condition, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def the_same_runs(monkeypatch, n: int) -> list:
    runs = sorted(grid.runs("smoke"), key=grid.cost)[:n]
    monkeypatch.setattr(grid, "runs", lambda profile: runs)
    monkeypatch.setattr(grid, "dense_runs", lambda profile: [])
    return runs


def results(folder: Path) -> dict:
    """file name → the record's config and numbers (what a page reads; timings and machines aside)."""
    return {f.name: (r["config"], dict(provenance.numbers({k: r.get(k) for k in records.RESULT_FIELDS})))
            for f, r in records.read_all(sorted(folder.glob("*.json"))).items()}


def test_two_grids_on_one_store_compute_each_run_once_and_store_what_one_grid_would(tmp_path, monkeypatch):
    runs = the_same_runs(monkeypatch, 4)
    both = [start_grid(tmp_path, name, len(runs)) for name in ("a", "b")]
    assert wait_for(lambda: all((tmp_path / f"ready-{n}").exists() for n in "ab")), "the grids never started"
    (tmp_path / "go").touch()  # both list the missing runs at once: without claims, each computes all of them
    computed = [json.loads(p.communicate(timeout=600)[0]) for p in both]
    assert sorted(computed[0] + computed[1]) == sorted(c.key() for c in runs)  # each run once between them
    assert computed[0] and computed[1], "one grid computed everything: they did not share the work"
    assert not list((records.results_dir() / claims.FOLDER).iterdir())  # every claim released
    shared = results(records.results_dir())

    monkeypatch.setenv("RECONLIB_RESULTS", str(tmp_path / "alone"))
    parallel.compute("smoke", workers=1, progress=False)
    alone = results(tmp_path / "alone")
    assert shared.keys() == alone.keys() and len(alone) == len(runs)
    assert shared == alone  # record for record, config and every number bit for bit (one machine, one thread)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tells a live holder by /proc")
def test_a_claim_left_by_a_killed_grid_blocks_no_later_grid(tmp_path, monkeypatch):
    runs = the_same_runs(monkeypatch, 2)
    (tmp_path / "go").touch()
    killed = start_grid(tmp_path, "killed", len(runs))
    held = records.results_dir() / claims.FOLDER
    assert wait_for(lambda: any(held.glob("*.claim")) or killed.poll() is not None), "the grid never claimed a run"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    [left] = held.glob("*.claim")  # SIGKILL runs no clean-up: its claim stays behind
    assert left.stem not in {r["key"] for r in records.all_records()}  # (which reads the store past the claim)

    done = parallel.compute("smoke", workers=1, progress=False)
    assert left.stem in {c.key() for _, c, _ in done} and grid.missing("smoke") == []
    assert not list(held.iterdir())


def claim_of(store: Path, name: str, **holder) -> Path:
    file = store / claims.FOLDER / f"{name}.claim"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(claims.holder() | holder))
    return file


def test_a_live_holder_keeps_its_claim_and_a_gone_one_loses_it(tmp_path):
    with claims.Claims(tmp_path) as mine:
        assert mine.take("a") and not mine.take("a")  # held: even by this process, a second take fails
        with claims.Claims(tmp_path) as other:
            assert not other.take("a")
            mine.release("a")
            assert other.take("a")
    assert not list((tmp_path / claims.FOLDER).iterdir())  # leaving the block released it

    with claims.Claims(tmp_path) as mine:
        if claims.holder()["started"]:  # Linux: a process of this host and boot that has ended
            ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
            claim_of(tmp_path, "killed", pid=int(ended.stdout), started="1")
            assert mine.take("killed")
        if claims.holder()["boot"]:  # this host, an earlier boot: stale whatever its pid
            claim_of(tmp_path, "rebooted", boot="an earlier boot")
            assert mine.take("rebooted")


def test_another_hosts_claim_holds_while_its_heartbeat_is_fresh(tmp_path, monkeypatch):
    """Its processes cannot be seen from here: only its heartbeat (the claim's mtime) tells it is alive."""
    file = claim_of(tmp_path, "far", host="another-host", pid=1, started="1")
    with claims.Claims(tmp_path) as mine:
        assert not mine.take("far")
        old = time.time() - claims.STALE - 60
        os.utime(file, (old, old))
        assert mine.take("far")
        assert json.loads(file.read_text())["host"] == claims.holder()["host"]

    monkeypatch.setattr(claims, "HEARTBEAT", 0.05)  # and this process's own heartbeat keeps its claim fresh
    with claims.Claims(tmp_path) as mine:
        mine.take("beating")
        beat = tmp_path / claims.FOLDER / "beating.claim"
        old = time.time() - claims.STALE - 60
        os.utime(beat, (old, old))
        assert wait_for(lambda: time.time() - beat.stat().st_mtime < claims.STALE, 5)
