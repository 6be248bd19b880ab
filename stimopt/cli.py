"""Console scripts: ``stimopt`` (Hydra app: one experiment, or a sweep with -m) and ``stimopt-plugins``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stimopt import plugins
from stimopt.errors import StimoptError


def _say_error(message: str) -> None:
    print(f"stimopt: error: {message}", file=sys.stderr)


def find_resume_dir(resume, run_dir: Path) -> Path:
    """``resume=PATH``: that run. ``resume=true``: this run dir if it holds a run, else the newest
    unfinished run beside it, said on stderr (path and last generation); a newest candidate that
    is not a valid store is refused rather than skipped, so the wrong run is never continued."""
    from stimopt.store import probe

    if resume is not True and str(resume).lower() != "true":
        path = Path(str(resume))
        if not (path / "evaluations.sqlite").exists():
            raise StimoptError(f"resume={resume}: no evaluations.sqlite there; give the run directory of the run to continue")
        probe(path / "evaluations.sqlite")
        return path
    if (run_dir / "evaluations.sqlite").exists():
        probe(run_dir / "evaluations.sqlite")
        return run_dir
    found = sorted(((db.stat().st_mtime, db.parent) for db in run_dir.parent.glob("*/evaluations.sqlite")
                    if db.is_file()), reverse=True)
    for _, folder in found:
        try:
            info = probe(folder / "evaluations.sqlite")
        except StimoptError as exc:
            raise StimoptError(f"resume=true: the newest run in {run_dir.parent} is not a valid store: {exc}; "
                               f"pass resume=PATH to the run to continue, or move {folder} away") from None
        if info["status"] != "finished":
            print(f"stimopt: resume=true picked the newest unfinished run {folder} (status {info['status']}, "
                  f"last committed generation {info['generation']}, {info['n_evaluations']} evaluations)", file=sys.stderr)
            return folder
    raise StimoptError(f"resume=true: no unfinished run in {run_dir.parent}; pass resume=PATH to a run directory")


def keep_record(run_dir: Path) -> None:
    """Hydra has just rewritten ``.hydra/`` of ``run_dir``: if it holds a run, put back the files
    of the run's first start (the record never changes) and keep this invocation's aside."""
    from stimopt.rundir import restore_record
    from stimopt.store import probe

    if not (run_dir / "evaluations.sqlite").is_file():
        return
    try:
        record = probe(run_dir / "evaluations.sqlite")["record"]
    except StimoptError:
        return  # a damaged store: opening it says so
    if record:
        restore_record(run_dir, record)


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from stimopt.experiment import run_experiment

    from stimopt.interrupt import Interrupted

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        keep_record(run_dir)
        if cfg.resume not in (False, None) and str(cfg.resume).lower() != "false":
            run_dir = find_resume_dir(cfg.resume, run_dir)
            print(f"stimopt: resuming the run in {run_dir}", file=sys.stderr)
        summary = run_experiment(cfg, run_dir, progress=not multirun)
    except (Interrupted, KeyboardInterrupt) as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        done = getattr(exc, "summary", None)
        where = (f"{done['n_evaluations']} evaluations are committed in {run_dir}; continue with the same overrides "
                 f"and resume={run_dir}") if done else "no generation was started"
        print(f"stimopt: interrupted by {exc.name if isinstance(exc, Interrupted) else 'SIGINT'}: {where}", file=sys.stderr)
        sys.exit(code)
    except StimoptError as exc:
        _say_error(str(exc))
        if multirun:  # one bad job must not sink the sweep; the sweep table marks it
            from stimopt.rundir import write_atomic

            write_atomic(run_dir / "error.txt", str(exc) + "\n")
            return
        sys.exit(2)
    if summary["best_response"] is None:  # every response missing (e.g. a rig that never answered)
        print(f"no response was recorded in {summary['n_evaluations']} evaluations ({summary['n_missing']} missing, "
              f"{summary['wall_s']:.1f} s): {run_dir}")
        return
    print(
        f"best response {summary['best_response']:.6g} after {summary['n_evaluations']} evaluations "
        f"({summary['wall_s']:.1f} s): {run_dir}"
    )


def main() -> None:
    from stimopt.interrupt import run_app_interruptible

    run_app_interruptible("stimopt", "config", _task)


def plugins_main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stimopt-plugins", description="List installed stimopt plugins.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    infos = plugins.plugin_infos()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    for info in infos:
        print(f"{info.name}: package {info.package} {info.version or '?'}, module {info.module}")
        if info.error:
            print(f"  FAILED TO LOAD: {info.error}")
            continue
        print(f"  hooks: {', '.join(info.hooks)}")
        for kind, names in info.registers.items():
            print(f"  {kind}s: {', '.join(names)}")
        for folder in info.config_dirs:
            print(f"  configs: {folder}")
