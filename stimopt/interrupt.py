"""SIGINT and SIGTERM (what SLURM and systemd send) end a run the same clean way.

The first signal raises :class:`Interrupted` in the main thread: the generation in flight is
abandoned (its transaction never committed: the store holds whole generations only), the run is
marked ``interrupted``, summary.json is written, and the process exits with 128 + the signal's
number after one line on stderr; ``resume=true`` continues it. Signals that arrive while the
record is being written (``defer()``) are noted and do not cut it short.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised by the first SIGINT/SIGTERM of a run; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.summary: dict | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Guard:
    def __init__(self):
        self.deferred = False
        self.fired: int | None = None

    def handler(self, signum, frame):
        if self.fired is None and not self.deferred:
            self.fired = signum
            raise Interrupted(signum)
        self.fired = self.fired or signum
        print(f"stimopt: {signal.Signals(signum).name} received; finishing the run's record first "
              "(SIGKILL abandons it; committed generations are safe either way)", file=sys.stderr, flush=True)

    def defer(self) -> None:
        """From now on, signals wait: the run's record is being written."""
        self.deferred = True


@contextmanager
def interruptible():
    """Within: SIGINT/SIGTERM raise Interrupted once (main thread only; elsewhere a no-op)."""
    guard = _Guard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, guard.handler)
    try:
        yield guard
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_app_interruptible(program: str, config_name: str, task) -> None:
    """``stimopt.config.run_app`` with Ctrl-C as one line: while starting (imports, plugins, Hydra)
    nothing was run; once ``task`` has started, what it committed is kept (a run's own handler
    says more and exits first).

    While starting, a SIGINT is only noted, and the start-up ends before ``task`` would begin: a
    KeyboardInterrupt raised inside an import could be swallowed by a library that catches every
    error around its own optional imports, and the run would go on as if no key had been pressed."""
    import functools

    started, pending = [], []
    default = signal.getsignal(signal.SIGINT)
    # main thread only, and only where Ctrl-C raises (a process started with SIGINT ignored keeps ignoring it)
    main = threading.current_thread() is threading.main_thread() and default is signal.default_int_handler

    @functools.wraps(task)  # Hydra names the job after the task's module
    def task_started(cfg):
        if pending:
            raise KeyboardInterrupt
        started.append(True)
        if main:
            signal.signal(signal.SIGINT, default)  # from here a Ctrl-C raises (the run installs its own handler)
        return task(cfg)

    if main:
        signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        from stimopt.config import run_app

        run_app(program, config_name, task_started)
        if pending and not started:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        said = "; what it had committed is kept" if started else " while starting; nothing was run or recorded"
        print(f"{program}: interrupted{said}", file=sys.stderr)
        sys.exit(130)
    finally:
        if main:
            signal.signal(signal.SIGINT, default)
