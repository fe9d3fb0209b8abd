"""Running the grid's missing runs side by side: a process pool, or a Ray cluster. Which runs there are, and
what they cost, is grid.py's; here is only how they are executed and written."""
from __future__ import annotations

import os
import time
from itertools import islice

from . import claims, grid


def _work(item):
    """One run on a worker (a process of the pool, or a Ray task): its record, computed, not written, so that
    the driver writes every record into its own store whatever filesystem the worker sees."""
    kind, config = item
    import torch

    from . import pipeline

    torch.set_num_threads(int(os.environ.get("RECONLIB_THREADS", "1")))
    started = time.perf_counter()
    record = pipeline.compute_dense(config) if kind == "dense" else pipeline.compute(config, progress=False)
    return kind, config, record, time.perf_counter() - started


def _die_with(driver: int):
    """A pool worker's first act: a thread that ends the worker once its driver is gone. A killed driver
    (SIGTERM, SIGKILL, a closed terminal) runs no clean-up, and its workers would otherwise go on computing
    runs whose records nobody is left to write."""
    import threading

    def watch():
        while os.getppid() == driver:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _pool(todo: list, workers: int):
    """(kind, config, record, seconds) as the runs finish, `workers` processes side by side."""
    if workers <= 1:
        yield from map(_work, todo)
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with, initargs=(os.getpid(),)) as pool:
        # `workers` runs in flight, the next one drawn from `todo` as one ends: drawing a run claims it (compute),
        # so a run is claimed as it starts, not all of them at once, and another grid shares the rest
        items = iter(todo)
        running = {pool.submit(_work, item) for item in islice(items, workers)}
        try:
            while running:
                ended, running = wait(running, return_when=FIRST_COMPLETED)
                for f in ended:
                    yield f.result()
                    running |= {pool.submit(_work, item) for item in islice(items, 1)}
        finally:
            for f in running:
                f.cancel()


def _ray(todo: list, workers: int, address: str | None):
    """The same on a Ray cluster: `address` None starts a local one of `workers` CPUs; "auto" or
    "ray://host:10001" joins a running one, where each run asks for one CPU (and a GPU when it has some)."""
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(("RECONLIB_", "HF_"))} | {"OMP_NUM_THREADS": "1"}
    ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
             runtime_env={"env_vars": env}, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(_work)
        gpus = 1 if address and ray.cluster_resources().get("GPU") else 0
        pending = [remote.options(num_cpus=1, num_gpus=gpus).remote(item) for item in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        ray.shutdown()


def compute(profile: str, workers: int = 1, progress: bool = True, executor: str = "process",
            address: str | None = None, only: tuple[str, ...] = ()) -> list:
    """Compute every missing record of the grid, `workers` runs side by side with one thread each (a process
    pool, or Ray with `executor="ray"`); the driver writes each record the moment its run ends, so a killed
    grid loses only the runs in flight (and a long one resumes at its checkpoint). Each run is claimed before it
    starts (claims.py), so grids sharing the store compute each run once between them; Ray's driver claims its
    runs as it submits them, all at once. `only`: the runs of these grid.GROUPS alone.
    → (kind, config, seconds) of the runs this process computed."""
    from tqdm.auto import tqdm

    from . import records

    todo = grid.missing(profile, only)
    done = []
    if not todo:
        return done
    bar = tqdm(total=sum(grid.cost(c) for _, c in todo), desc=f"grid {profile}: {len(todo)} runs", unit="cost",
               disable=not progress, bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
    with claims.Claims(records.results_dir()) as held:
        mine = _claimed(todo, held)
        results = _ray(mine, workers, address) if executor == "ray" else _pool(mine, workers)
        try:
            for kind, config, record, seconds in results:
                file = _record_file(kind, config)
                records.write(file, record)
                held.release(file.stem)  # after the write: whoever claims it next finds the record
                done.append((kind, config, seconds))
                bar.update(grid.cost(config))
                bar.set_postfix_str(f"{len(done)}/{len(todo)} done, last: {grid.label(kind, config)} {seconds:.0f} s")
        finally:
            bar.close()
    return done


def _record_file(kind: str, config):
    from . import records

    return records.dense_path(config) if kind == "dense" else records.path(config)


def _claimed(todo: list, held: claims.Claims):
    """The runs of `todo` that this process claims, one as each is drawn: a run another grid holds, or has
    recorded since `todo` was listed, is skipped (claims.py)."""
    for kind, config in todo:
        file = _record_file(kind, config)
        if not held.take(file.stem):
            continue
        if file.is_file():  # recorded by another grid after this one listed it
            held.release(file.stem)
            continue
        yield kind, config
