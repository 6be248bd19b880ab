"""From a composed config to a finished run directory: build the trio, check it fits, run, report."""
from __future__ import annotations

import hashlib
import inspect
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from stimopt import plugins, schema
from stimopt.engine import Run
from stimopt.errors import StimoptError
from stimopt.objective import Objective
from stimopt.store import RunStore

# Keys that may differ between a run and its resumption.
RESUME_FREE_KEYS = ("resume", "logger", "budget", "device", "store")


def _contract(kind: str) -> type:
    from stimopt.api import Generator, Optimizer, Target

    return {"target": Target, "generator": Generator, "optimizer": Optimizer}[kind]


def component_name(node) -> str:
    """The registered name of the class a group config selects (``cmaes`` -> ``nevergrad``), else its class name."""
    path = node.get("_target_") if node is not None else None
    if not path:
        return str(node.get("name", "?")) if node is not None else "?"
    try:
        from hydra.utils import get_class

        cls = get_class(str(path))
    except Exception:
        return str(path).rsplit(".", 1)[-1]
    for reg in plugins.registry().values():
        for name, (registered, _) in reg.items():
            if registered is cls:
                return name
    return cls.__name__


def resolve_class(kind: str, node: DictConfig) -> type:
    """The class a group config selects with ``_target_`` (Hydra's key); it must subclass the kind's contract."""
    contract = _contract(kind)
    path = node.get("_target_")
    if not path:
        reg = plugins.registry()[kind]
        legacy = node.get("name")
        example = (f"{reg[legacy][0].__module__}.{reg[legacy][0].__qualname__}" if legacy in reg
                   else "package.module.Class")
        raise StimoptError(f"the {kind} config needs '_target_: {example}' (a stimopt.{contract.__name__} subclass); "
                           "'name:' does not select a class")
    from hydra.utils import get_class

    try:
        cls = get_class(str(path))
    except Exception as exc:
        raise StimoptError(f"{kind} class '{path}' cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, contract)):
        raise StimoptError(f"{kind}._target_ must name a stimopt.{contract.__name__} subclass, got '{path}'")
    return cls


def build(kind: str, node: DictConfig, **context):
    """Instantiate a target/generator/optimizer from its group config, as ``hydra.utils.instantiate``
    would (``_target_`` names the class, every other key is a constructor option; nested nodes are
    passed as plain values, never instantiated), after checking the class and the options.

    Context values (``device``) are passed when the class's constructor takes them.
    """
    cls = resolve_class(kind, node)
    data = OmegaConf.to_container(node, resolve=True)
    kwargs = {k: v for k, v in data.items() if not (k.startswith("_") and k.endswith("_"))}
    sig = inspect.signature(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for key, value in context.items():
        if key in sig.parameters or takes_any:
            kwargs.setdefault(key, value)
    try:
        sig.bind(None, **kwargs)
    except TypeError:
        valid = [p for p in sig.parameters if p not in ("self", "device")]
        unknown = [k for k in kwargs if k not in sig.parameters]
        raise StimoptError(
            f"{kind} '{component_name(node)}' does not take option(s) {', '.join(unknown) or '(missing required)'}; "
            f"it takes: {', '.join(valid) or 'nothing'}"
        ) from None
    return cls(**kwargs)


def check_fit(space_type: type, accepts: tuple, gen_name: str, opt_name: str, space=None) -> None:
    """Refuse a trio whose optimizer cannot search the generator's code space, naming what fits.

    Called twice: with the classes' declared ``space_type``/``accepts`` before anything heavy is
    built (a bank, a model), and with the built generator's actual ``space``.
    """
    if (isinstance(space, accepts) if space is not None else issubclass(space_type, accepts)):
        return
    from stimopt.config import presets_for

    reg = plugins.registry()
    fitting_opts = sorted(
        n for n, (cls, _) in reg["optimizer"].items() if issubclass(space_type, getattr(cls, "accepts", ()))
    )
    fitting_gens = sorted(
        n for n, (cls, _) in reg["generator"].items() if issubclass(getattr(cls, "space_type", object), accepts)
    )
    raise StimoptError(
        f"optimizer '{opt_name}' cannot search generator '{gen_name}' ({space_type.kind} codes); "
        f"optimizers that fit '{gen_name}': {', '.join(fitting_opts) or 'none'}; "
        f"generators that fit '{opt_name}': {', '.join(fitting_gens) or 'none'}"
        + "".join(f"; or use experiment={p}" for p in presets_for("optimizer", opt_name)[:1])
    )


def config_hash(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in RESUME_FREE_KEYS:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        if not prefix and key in RESUME_FREE_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def open_store(cfg: DictConfig, run_dir: Path) -> RunStore:
    """The run's store, holding the run dir's lock (stimopt.rundir) until it is closed; on resume,
    the existing one after checking it is sound and the config is the same."""
    import sqlite3

    from stimopt.rundir import RunLock, read_record

    path = run_dir / "evaluations.sqlite"
    synchronous = str((cfg.get("store") or {}).get("synchronous", "FULL")).upper()
    if synchronous not in ("FULL", "NORMAL"):
        raise StimoptError(f"store.synchronous must be FULL or NORMAL, got '{synchronous}'")
    lock = RunLock(run_dir)  # before anything is read or written: one process per run dir
    store = None
    try:
        existed = path.exists()
        try:
            store = RunStore(path, synchronous=synchronous)
        except sqlite3.DatabaseError as exc:
            if not existed:
                raise StimoptError(f"cannot create the run store {path} ({exc}); check the disk and the folder's permissions") from None
            raise StimoptError(f"the run store {path} is damaged ({exc}); salvage its committed rows with: "
                               f"stimopt-recover {run_dir} NEW_RUN_DIR") from None
        store.lock, store.created = lock, False
        if existed:
            store.check()
        current = OmegaConf.to_container(cfg, resolve=True)
        if existed and store.meta("config_hash") is not None:
            if not cfg.resume:
                raise StimoptError(f"{run_dir} already holds a run; pass resume=true to continue it or choose a new run dir")
            if store.meta("config_hash") != config_hash(cfg):
                diff = "; ".join(config_diff(store.meta("config"), current)) or "structure"
                raise StimoptError(f"cannot resume {run_dir}: its config differs ({diff}); resume with the same overrides or start a new run")
            store.previous_status = store.meta("status")
            store.set_meta(status="running")
        else:
            store.set_meta(config=current, config_hash=config_hash(cfg), status="running", record=read_record(run_dir))
            store.created = True
    except sqlite3.OperationalError as exc:
        if store is not None:
            store.close()
        lock.release()
        raise StimoptError(f"cannot write the run store {path} ({exc}); make it writable or choose another hydra.run.dir") from None
    except BaseException:
        if store is not None:
            store.close()
        lock.release()
        raise
    return store


def build_run(cfg: DictConfig, run_dir: Path) -> Run:
    """Compose target, generator, optimizer, objective and store; restore state when resuming."""
    schema.validate(cfg)  # types and ranges of the top-level keys, before anything is built (stimopt.schema)
    plugins.load_plugins()
    if cfg.budget is None or int(cfg.budget) <= 0:
        raise StimoptError(f"budget must be a positive number of evaluations, got {cfg.budget}")
    seed_everything(int(cfg.seed))
    gen_name, opt_name = component_name(cfg.generator), component_name(cfg.optimizer)
    gen_cls, opt_cls = resolve_class("generator", cfg.generator), resolve_class("optimizer", cfg.optimizer)
    check_fit(gen_cls.space_type, opt_cls.accepts, gen_name, opt_name)  # cheap: before any model or bank loads
    from stimopt import noise
    from stimopt.differentiable import check_white_box

    names = (component_name(cfg.target), gen_name, opt_name)
    noisy = (cfg.get("noise") or {}).get("kind") not in (None, "none", "null", False)
    check_white_box(opt_cls, resolve_class("target", cfg.target), gen_cls, names, noisy)  # before anything is shown
    from stimopt.interleave import Interleave, from_config

    optimizer = build("optimizer", cfg.optimizer)
    # target.references / target.elites are the engine's (stimopt.interleave), not the target class's options
    target_options = OmegaConf.to_container(cfg.target, resolve=True)
    references, elites = from_config(target_options)
    target_node = OmegaConf.create({k: v for k, v in target_options.items() if k not in ("references", "elites")})
    # the noise group (noise=none|poisson|gaussian) wraps any target (stimopt.noise)
    target = noise.wrap(build("target", target_node, device=cfg.device), cfg.get("noise"), seed=int(cfg.seed))
    generator = build("generator", cfg.generator, device=cfg.device)
    check_fit(type(generator.space), opt_cls.accepts, gen_name, opt_name, space=generator.space)
    check_white_box(opt_cls, target, generator, names)
    objective = Objective(cfg.direction, **OmegaConf.to_container(cfg.get("objective") or {}, resolve=True))
    run_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg, run_dir)
    optimizer.setup(generator.space, seed=int(cfg.seed), budget=int(cfg.budget), batch_size=int(cfg.batch_size))
    run = Run(  # hands the optimizer the run's objective handle (Optimizer.bind)
        target=target, generator=generator, optimizer=optimizer, objective=objective, store=store,
        budget=int(cfg.budget), batch_size=int(cfg.batch_size),
        on_bad_response=str(cfg.on_bad_response), run_dir=run_dir,
        budget_counts=str(cfg.get("budget_counts") or "stimuli"), interleave=Interleave(references, elites),
        lookahead=schema.whole_number("lookahead", cfg.get("lookahead", 0), 0, "0 or 1 (generations asked ahead)"),
    )
    run.restore()
    return run


def summarize(run: Run, cfg: DictConfig, wall_s: float, status: str) -> dict:
    """summary.json's content, read back from the store (so it is true after a resume too)."""
    from stimopt import reference

    responses = run.store.responses()
    p = run.progress
    evals_to_best = None
    if np.isfinite(p.best_response):
        hits = np.flatnonzero(responses == p.best_response)
        evals_to_best = int(hits[0]) + 1 if hits.size else None
    outside = p.time_total - p.time_generate - p.time_evaluate
    return {
        "status": status,
        "best_response": p.best_response if np.isfinite(p.best_response) else None,
        "n_evaluations": p.n_evaluations,
        "n_missing": int(np.isnan(responses).sum()),
        "n_presentations": p.n_presentations,  # every image shown x the target's presentations per image
        "budget_counts": run.budget_counts,
        "evaluations_to_best": evals_to_best,
        "generations": p.generation,
        "direction": cfg.direction,
        "target": run.target.describe(),
        "generator": run.generator.describe(),
        "optimizer": run.optimizer.describe(),
        "target_name": component_name(cfg.target),
        "generator_name": component_name(cfg.generator),
        "optimizer_name": component_name(cfg.optimizer),
        "seed": int(cfg.seed),
        "budget": int(cfg.budget),
        "wall_s": round(wall_s, 3),
        "loop_s": round(p.time_total, 3),
        "generate_s": round(p.time_generate, 3),
        "evaluate_s": round(p.time_evaluate, 3),
        "overhead_fraction": round(outside / p.time_total, 4) if p.time_total > 0 else None,
        "optimizer_report": run.optimizer.report(),
        "reference": reference.summarize(run, cfg),  # relative activation vs natural images (stimopt.reference)
        **run.interleave.summarize(run.store),  # references (drift signal), elites (confirmed best): when configured
    }


def run_experiment(cfg: DictConfig, run_dir: str | Path, observers=None, progress: bool = True) -> dict:
    """Run (or resume) one experiment into ``run_dir`` and write its report. Returns the summary.

    ``observers=None`` attaches the configured ones (progress bar, logger). SIGINT/SIGTERM end it
    cleanly (stimopt.interrupt): status ``interrupted``, summary written, resumable; the
    :class:`~stimopt.interrupt.Interrupted` raised carries the summary. Problems that can be
    found before the first stimulus is shown are (stimopt.preflight).
    """
    from stimopt import report
    from stimopt.interrupt import Interrupted, interruptible
    from stimopt.observers import make_observers
    from stimopt.preflight import preflight

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    with interruptible() as guard:
        run = build_run(cfg, run_dir)
        try:
            preflight(run, cfg)
        except BaseException:
            _abandon(run)
            raise
        status = "failed"
        try:
            run.observers = list(observers) if observers is not None else make_observers(cfg, run_dir, progress)
            run.run()
            status = "finished"
        except Interrupted as exc:
            status = "interrupted"
            exc.summary = summary = _finish(run, cfg, t0, status, guard, report)
            raise
        finally:
            if status != "interrupted":
                summary = _finish(run, cfg, t0, status, guard, report)
    return summary


def _abandon(run: Run) -> None:
    """Preflight failed: nothing was shown. A store this invocation created (still empty) goes."""
    created = getattr(run.store, "created", False) and run.store.n_evaluations() == 0
    path = run.store.path
    if not created and getattr(run.store, "previous_status", None):
        run.store.set_meta(status=run.store.previous_status)
    run.store.close()
    run.target.close()
    if created:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _finish(run: Run, cfg: DictConfig, t0: float, status: str, guard, report) -> dict:
    """The run's record: summary + report files, observers told, status set, store closed. A
    failure to write a report file is one line on stderr; the store keeps every committed row."""
    import sqlite3
    import sys

    guard.defer()
    summary = summarize(run, cfg, time.perf_counter() - t0, status)
    try:
        try:
            report.write(run, summary)
        except OSError as exc:
            print(f"stimopt: warning: could not write the report in {run.run_dir} ({exc.strerror or exc}); "
                  f"every committed evaluation is in {run.store.path}", file=sys.stderr)
        for obs in run.observers:
            obs.on_end(run, summary)
    finally:
        try:
            run.store.set_meta(status=status)
        except sqlite3.Error as exc:
            print(f"stimopt: warning: could not mark the run {status} in {run.store.path} ({exc})", file=sys.stderr)
        run.store.close()
        run.target.close()
    return summary
