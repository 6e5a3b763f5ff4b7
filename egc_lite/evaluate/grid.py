"""``egc sweep GRID.yaml``: run a notebook once per point of a parameter grid, gather one table.

The grid file (YAML; relative paths are relative to it)::

    notebook: ../notebooks/02_compression_guidance.ipynb
    out: nb02_sc_sf                # results folder (default: the YAML's name beside it)
    parameters:                    # fixed for every point
      max_side: 128
      save_figures: false
    grid:                          # the product of these lists ...
      sc: [0.05, 0.1, 0.2]
      sf: [1, 3, 5]
    points:                        # ... and/or explicit points (merged with parameters)
      - {sc: 0, sf: 1}
    timeout: 3600                  # seconds per cell (optional)
    plot: {x: sf, y: sc, metrics: [psnr, ms_ssim]}   # optional; default: see below
    cluster: {cores: 4, memory: 16GB, walltime: "01:00:00"}   # dask-jobqueue options (--cluster slurm|pbs)

Each point runs the notebook with papermill into ``<out>/points/<id>.ipynb``; what the notebook
recorded with :func:`egc_lite.evaluate.record.record` goes to ``<id>.json`` beside it and to one row
of ``<out>/results.csv`` / ``results.json`` (the point's varying parameters, then the recorded
values, status, error and seconds). A point id is its varying values plus a hash of all its
parameters, so a finished point is skipped when the sweep runs again (after Ctrl-C, a crash, or
with more points), a failed one is recorded with its error and retried, and changing a fixed
parameter starts fresh points. Plots: heatmaps over two varying parameters (``y`` rows, ``x``
columns; other varying parameters averaged), lines over one, for every numeric recorded value.

Engines: ``processes`` (default; ``--workers N`` local processes, or in this process for one) and
``dask`` (a ``LocalCluster`` of ``--workers`` single-threaded processes, an existing scheduler with
``--scheduler ADDRESS``, or Slurm/PBS jobs through dask-jobqueue with ``--cluster slurm|pbs``).
Only this process writes the table; workers need the notebook and the output folder on a shared
file system.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParameterError
from ..progress import progress
from .record import read_records
from .store import FAILED, OK, RecordStore, RunReport

_KEYS = {"notebook", "out", "parameters", "grid", "points", "timeout", "kernel", "plot", "cluster"}
ENGINES = ("processes", "dask")
CLUSTERS = ("local", "slurm", "pbs")


@dataclass(frozen=True)
class SweepSpec:
    """A parsed grid file."""

    notebook: Path
    out: Path
    parameters: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    points: tuple = ()
    timeout: int | None = None
    kernel: str = "python3"
    plot: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    """One run: its id, the parameters that vary across the sweep, and all parameters passed."""

    id: str
    varying: dict
    parameters: dict


@dataclass(frozen=True)
class PointTask:
    """What a worker needs to run one point (picklable)."""

    point: Point
    notebook: Path
    output: Path
    kernel: str
    timeout: int | None


@dataclass(frozen=True)
class RunOptions:
    """How to run a sweep's points."""

    engine: str = "processes"
    workers: int = 1
    scheduler: str | None = None  # dask: address of a running scheduler
    cluster: str = "local"  # dask: local, slurm or pbs
    jobs: int | None = None  # dask-jobqueue: number of batch jobs (default: workers)
    figures: Path | None = None  # where the plots go (default: <out>/figures)


class SweepReport(RunReport):
    """What a sweep run did and where its results are (rows: its points)."""


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a grid file (see the module docstring); mistakes raise :class:`ParameterError`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"grid file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParameterError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ParameterError(f"{path} must hold a mapping with at least 'notebook' and 'grid' or 'points'")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ParameterError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    base = path.parent
    if "notebook" not in raw:
        raise ParameterError(f"{path}: 'notebook' is missing")
    notebook = (base / str(raw["notebook"])).resolve()
    if not notebook.is_file():
        raise ParameterError(f"{path}: notebook {notebook} not found")
    for key in ("parameters", "grid", "plot", "cluster"):
        if not isinstance(raw.get(key) or {}, dict):
            raise ParameterError(f"{path}: '{key}' must be a mapping")
    grid = raw.get("grid") or {}
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ParameterError(f"{path}: grid values must be non-empty lists, got {k}: {v!r}")
    points = raw.get("points") or []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ParameterError(f"{path}: 'points' must be a list of mappings")
    if not grid and not points:
        raise ParameterError(f"{path}: give a 'grid' and/or 'points'")
    timeout = raw.get("timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
        raise ParameterError(f"{path}: 'timeout' must be a positive number of seconds")
    out = base / str(raw.get("out") or path.stem)
    return SweepSpec(notebook, out.resolve(), dict(raw.get("parameters") or {}), dict(grid), tuple(points),
                     timeout, str(raw.get("kernel") or "python3"), dict(raw.get("plot") or {}), dict(raw.get("cluster") or {}))


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", f"{value:g}" if isinstance(value, float) else str(value))


def expand(spec: SweepSpec) -> list[Point]:
    """The sweep's points: the grid's product, then the explicit points, duplicates removed."""
    combos = [dict(zip(spec.grid, vals)) for vals in itertools.product(*spec.grid.values())] if spec.grid else []
    combos += [dict(p) for p in spec.points]
    keys = list(dict.fromkeys(k for c in combos for k in c))
    out, seen = [], set()
    for c in combos:
        params = {**spec.parameters, **c}
        digest = hashlib.sha1(json.dumps([spec.notebook.name, params], sort_keys=True, default=str).encode()).hexdigest()[:8]
        if digest in seen:
            continue
        seen.add(digest)
        slug = "_".join(f"{k}={_slug(c[k])}" for k in keys if k in c)[:80]
        out.append(Point(f"{slug}-{digest}" if slug else digest, {k: c[k] for k in keys if k in c}, params))
    return out


def _error_text(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # papermill's PapermillExecutionError: the notebook's own exception
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def run_point(task: PointTask) -> dict:
    """Execute one point with papermill (anywhere: here, a local process, a Dask worker); returns its record."""
    import papermill

    task.output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    status, error = OK, None
    try:
        # an IPython kernel logs at WARNING on its start (e.g. "running over TCP without encryption") to the
        # stderr it inherits, which is the user's terminal (and an interrupt at a worker's shutdown at ERROR); a
        # notebook's own errors are recorded in its row
        quiet = ["--IPKernelApp.log_level=CRITICAL"] if task.kernel.startswith("python") else []
        papermill.execute_notebook(str(task.notebook), str(task.output), parameters=task.point.parameters,
                                   kernel_name=task.kernel, cwd=str(task.notebook.parent), progress_bar=False,
                                   log_output=False, start_timeout=120, execution_timeout=task.timeout,
                                   extra_arguments=quiet)
    except Exception as exc:  # any failure of the notebook is this point's result, recorded with its error
        status, error = FAILED, _error_text(exc)
    scalars = read_records(task.output) if task.output.is_file() else {}
    return make_record(task, status, error, scalars, time.perf_counter() - t0)


def make_record(task: PointTask, status: str, error: str | None, scalars: dict, seconds: float) -> dict:
    """A point's row: id, varying parameters, recorded values (renamed ``<name>_result`` on a clash), status."""
    p = task.point
    row = {"point": p.id, **p.varying}
    for k, v in scalars.items():
        row[f"{k}_result" if k in row else k] = v
    row.update(status=status, error=error, seconds=round(seconds, 2), notebook=task.output.name, key=p.id,
               parameters=p.parameters)
    return row


def _failed(task: PointTask, exc: BaseException) -> dict:
    return make_record(task, FAILED, _error_text(exc), {}, 0.0)


def _run_processes(tasks: Sequence[PointTask], workers: int) -> Iterator[dict]:
    if workers <= 1:
        for t in tasks:
            yield run_point(t)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_point, t): t for t in tasks}
        try:
            for fut in as_completed(futures):
                try:
                    yield fut.result()
                except Exception as exc:  # a worker died
                    yield _failed(futures[fut], exc)
        finally:
            for fut in futures:
                fut.cancel()


def _dask_client(opts: RunOptions, spec: SweepSpec):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ParameterError("the dask engine needs `pip install 'dask[distributed]'` (and dask-jobqueue for Slurm/PBS)") from None
    if opts.scheduler:
        try:
            return Client(opts.scheduler, timeout="30s"), None
        except OSError as exc:
            raise ParameterError(f"cannot reach the Dask scheduler at {opts.scheduler} ({exc})") from None
    if opts.cluster == "local":
        # silence_logs: the workers' log lines (a heartbeat that races the cluster's shutdown logs a whole
        # traceback at ERROR) would reach the user's terminal; a point's failure is recorded in its row instead
        cluster = LocalCluster(n_workers=max(1, opts.workers), threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.CRITICAL)
    else:
        try:
            import dask_jobqueue
        except ImportError:
            raise ParameterError("--cluster slurm|pbs needs `pip install dask-jobqueue`") from None
        cls = dask_jobqueue.SLURMCluster if opts.cluster == "slurm" else dask_jobqueue.PBSCluster
        kwargs = {"cores": 1, "processes": 1, "memory": "8GB", **spec.cluster}
        try:
            cluster = cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"dask-jobqueue rejected the grid file's 'cluster' options: {exc}") from None
        cluster.scale(jobs=opts.jobs or max(1, opts.workers))
    return Client(cluster), cluster


def _run_dask(tasks: Sequence[PointTask], opts: RunOptions, spec: SweepSpec) -> Iterator[dict]:
    from distributed import as_completed

    client, cluster = _dask_client(opts, spec)
    try:
        futures = {client.submit(run_point, t, pure=False, key=f"egc-sweep-{t.point.id}"): t for t in tasks}
        try:
            for fut in as_completed(list(futures)):
                try:
                    yield fut.result()
                except Exception as exc:  # a worker died or the task could not run
                    yield _failed(futures[fut], exc)
        finally:
            client.cancel(list(futures))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_sweep(spec: SweepSpec, opts: RunOptions = RunOptions()) -> SweepReport:
    """Run (or resume) every unfinished point of ``spec``; write the table and the plots."""
    if opts.engine not in ENGINES:
        raise ParameterError(f"--engine must be one of {', '.join(ENGINES)}, got {opts.engine!r}")
    if opts.cluster not in CLUSTERS:
        raise ParameterError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {opts.cluster!r}")
    if opts.workers < 1:
        raise ParameterError(f"--workers must be at least 1, got {opts.workers}")
    if opts.engine == "processes" and (opts.scheduler or opts.cluster != "local"):
        raise ParameterError("--scheduler and --cluster need --engine dask")
    points = expand(spec)
    store = RecordStore(spec.out)
    tasks = [PointTask(p, spec.notebook, spec.out / "points" / f"{p.id}.ipynb", spec.kernel, spec.timeout)
             for p in points if not store.is_done(p.id)]
    t0 = time.perf_counter()
    ran = failed = 0
    results = _run_dask(tasks, opts, spec) if opts.engine == "dask" else _run_processes(tasks, opts.workers)
    try:
        for rec in progress(results, desc="sweep", total=len(tasks)):
            store.add(rec)
            (spec.out / "points" / f"{rec['point']}.json").write_text(json.dumps(store.get(rec["key"]), indent=1) + "\n")
            ran += 1
            failed += rec["status"] == FAILED
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    records = [store.get(p.id) for p in points if store.get(p.id) is not None]
    files = store.write_tables("results", records=records)
    files += save_sweep_figures(spec, records, opts.figures or spec.out / "figures")
    return SweepReport(spec.out, ran, len(points) - len(tasks), failed, time.perf_counter() - t0, files)


def load_results(out: str | Path):
    """A sweep's table (``<out>/results.json``) as a pandas data frame."""
    import pandas as pd

    path = Path(out) / "results.json"
    if not path.is_file():
        raise ParameterError(f"no sweep results in {out} (run `egc sweep GRID.yaml` first)")
    return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))


def plot_layout(spec: SweepSpec, records: Sequence[dict]) -> tuple[str | None, str | None, list[str]]:
    """``(x, y, metrics)`` of the sweep's plots: from the grid file's ``plot``, else guessed from the grid."""
    varying = [k for k in dict.fromkeys(k for p in expand(spec) for k in p.varying)
               if len({json.dumps(r.get(k), default=str) for r in records}) > 1]
    skip = set(varying) | {"point", "status", "error", "seconds", "notebook", "key", "parameters"}
    numeric = [k for k in dict.fromkeys(k for r in records for k in r) if k not in skip
               and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in records)]
    x = spec.plot.get("x", varying[-1] if varying else None)
    y = spec.plot.get("y", varying[-2] if len(varying) > 1 else None)
    return x, y, list(spec.plot.get("metrics", numeric))


def save_sweep_figures(spec: SweepSpec, records: Sequence[dict], folder: Path) -> list[Path]:
    """Heatmaps (two varying parameters) or lines (one) of every recorded number, as ``<folder>/sweep_<name>.png``."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from .plots import plot_grid

    ok = [r for r in records if r.get("status") == OK]
    x, y, metrics = plot_layout(spec, ok)
    if not ok or x is None or not metrics:
        return []
    df = pd.DataFrame(ok)
    for m in metrics:
        df[m] = pd.to_numeric(df.get(m), errors="coerce")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sweep_{spec.out.name}.png"
    fig = plot_grid(df, metrics, x=x, y=y, title=f"{spec.notebook.name}: {len(ok)} points")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]
