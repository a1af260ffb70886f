"""The console of a job: its own progress lines, warnings and summary; Ray's logging in a file.

A job on a local Ray prints what it does (a line per stage with counts and rates, the trainer's
line per log step with loss, tokens/s and MFU, the summary); what Ray itself logs -- its Python
loggers (``ray``, ``ray.data``, ``ray.train`` ...), Ray Data's progress dumps, and every line a
worker process writes that is not one of the job's -- goes to a log file (``<run>/logs/ray.log`` for ``neo demo``; next to the job's output for a job
run by hand: :func:`job_log_file`).

How a worker's line is told apart: every Ray worker runs :func:`setup_worker_logging` at start
(``runtime_env.worker_process_setup_hook``), which makes the job's own loggers (``neo*``,
``pipelines``) write their records to stderr behind :data:`MARK`; the driver's log handler
(:class:`LogRouter`) prints the marked lines without the mark and writes all lines to the file.
Ray's C++ core writes to file descriptor 2 directly; :class:`QuietRay` points that descriptor
at the log file too, and Python's ``sys.stderr`` at the console.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

MARK = "neo| "  # in front of a worker's line that is the job's own
JOB_LOGGERS = ("neo", "neo_data", "neo_model", "pipelines")
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "ray.serve")
LOG_NAME = "logs/ray.log"  # under a run folder (neo demo's)


class _ConsoleFormatter(logging.Formatter):
    """INFO records as their message; warnings and errors with their level in front."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(self.prefix + line for line in text.splitlines())


def _job_handlers(handler: logging.Handler) -> None:
    for name in JOB_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_neo_console", False)]:
            logger.removeHandler(old)
        handler._neo_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def setup_worker_logging() -> None:
    """In a Ray worker: the job's loggers write marked lines to stderr (INFO and up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ConsoleFormatter(MARK))
    _job_handlers(handler)


def job_log_file(output: str, job: str) -> Path:
    """Where a job run by hand keeps Ray's logging: ``<output's folder>/logs/ray-<job>.log``
    beside a local ``output`` (never inside it: a job's output holds its own files only), else
    ``runs/logs/ray-<job>.log``."""
    if "://" in output and not output.startswith("file://"):
        return Path("runs") / "logs" / f"ray-{job}.log"
    local = Path(output.removeprefix("file://")).absolute()
    return local.parent / "logs" / f"ray-{job}.log"


class LogRouter:
    """The driver's sink of worker output: every line to the log file, the job's lines (marked)
    to the console without their mark."""

    def __init__(self, log: TextIO, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.log = log
        self.stdout, self.stderr = stdout or sys.stdout, stderr or sys.stderr

    def __call__(self, data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        pid = data.get("pid", "")
        sink = self.stderr if data.get("is_err") else self.stdout
        for line in data.get("lines", []):
            self.log.write(f"({who} pid={pid}) {line}\n")
            if line.startswith(MARK):
                print(line[len(MARK) :], file=sink, flush=True)
        self.log.flush()


def _route_ray_loggers(handler: logging.Handler) -> None:
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False


class QuietRay:
    """Keeps a local Ray's logging off the console, in the file ``path``.

    :meth:`before_init` (before ``ray.init``): Ray's Python loggers go to the file, and so does
    this process's file descriptor 2 -- where Ray's C++ core (and the raylet it starts) write
    their own lines -- while Python's ``sys.stderr`` stays on the console (the job's warnings,
    errors and tracebacks). :meth:`after_init`: Ray Data's and Train's loggers (set up when
    imported) are re-pointed, Ray Data's progress output is off, and worker output goes through
    :class:`LogRouter`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 -- process-long
        self.handler = logging.StreamHandler(self.log)
        self.handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"
            )
        )

    def before_init(self) -> None:
        _route_ray_loggers(self.handler)
        if not getattr(sys, "_neo_fd2_redirected", False):
            sys.stderr.flush()
            terminal = os.dup(2)
            os.dup2(self.log.fileno(), 2)
            sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")
            sys._neo_fd2_redirected = True  # type: ignore[attr-defined]
        _job_handlers(_console_handler())

    def after_init(self) -> Path:
        import ray.data  # noqa: F401 -- configures the "ray.data" loggers, re-pointed below
        import ray.train  # noqa: F401
        from ray._private import worker as ray_worker
        from ray.data import DataContext

        _route_ray_loggers(self.handler)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", LogRouter(self.log))
        return self.path


def _console_handler() -> logging.Handler:
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_ConsoleFormatter())
    return console


class Progress:
    """A progress line per update: ``name: done/total unit (pct), rate/s, ETA``."""

    def __init__(
        self,
        name: str,
        total: int | None,
        unit: str,
        out: TextIO | None = None,
        every: float = 5.0,
        heartbeat: float = 60.0,
    ):
        self.name, self.total, self.unit = name, total, unit
        self.out = out or sys.stdout
        self.t0 = time.perf_counter()
        self.every, self.heartbeat = every, heartbeat
        self._last, self._last_done = self.t0, 0

    def due(self, done: int) -> bool:
        """Whether a line is due at ``done``: at the end, else when another 5% is done or
        ``heartbeat`` seconds passed, but never sooner than ``every`` seconds after the last
        line (a short job prints a few lines, a long one about twenty plus a heartbeat)."""
        now = time.perf_counter()
        if self.total and done >= self.total:
            ok = True
        else:
            since = now - self._last
            step = self.total / 20 if self.total else 0
            crossed = bool(step) and int(done // step) > int(self._last_done // step)
            ok = since >= self.every and (crossed or since >= self.heartbeat)
        if ok:
            self._last, self._last_done = now, done
        return ok

    def line(self, done: int, extra: str = "") -> str:
        secs = max(time.perf_counter() - self.t0, 1e-9)
        rate = done / secs
        text = f"{self.name}: {done:,}"
        if self.total:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            text += f"/{self.total:,} {self.unit} ({done / self.total:.0%}), {rate:,.1f}/s"
            text += f", ETA {eta:.0f} s" if done < self.total else f", {secs:.1f} s"
        else:
            text += f" {self.unit}, {rate:,.1f}/s, {secs:.1f} s"
        return text + (f"; {extra}" if extra else "")

    def update(self, done: int, extra: str = "") -> None:
        print(self.line(done, extra), file=self.out, flush=True)


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """``pid -> (ppid, start time, own user + system ticks)`` of every process in ``/proc``."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        table[int(entry)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
    return table


class CpuMeter:
    """CPU seconds (user + system) used by this process and all its descendants -- a local
    Ray's raylet and workers included -- while it runs.

    A background thread reads ``/proc`` every ``interval`` seconds and keeps the last CPU time
    seen of every process of the tree (keyed by pid and start time); a process that exits keeps
    its last sample (Ray's raylet does not collect its workers' times, so the kernel's
    ``cutime`` would lose them): at most ``interval`` of a short-lived process goes uncounted.
    Without ``/proc``, this process and its collected children only (``resource``).
    """

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval = interval
        self.root = os.getpid()
        self.seen: dict[tuple[int, int], int] = {}
        self.proc = os.path.isdir("/proc")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neo-cpu-meter", daemon=True)
        self._lock = threading.Lock()
        if self.proc:
            self.sample()
            self._thread.start()

    def sample(self) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo, tree = [self.root], []
        while todo:
            pid = todo.pop()
            if pid in table:
                tree.append(pid)
            todo.extend(children.get(pid, []))
        with self._lock:
            for pid in tree:
                _, started, ticks = table[pid]
                self.seen[(pid, started)] = ticks

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def seconds(self) -> float:
        """CPU seconds of the tree so far (a fresh sample first)."""
        if not self.proc:
            import resource

            usage = [
                resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            ]
            return sum(u.ru_utime + u.ru_stime for u in usage)
        self.sample()
        with self._lock:
            return sum(self.seen.values()) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._stop.set()
