"""Observers of the loop: the console progress bar and Weights & Biases."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from stimopt.engine import Observer
from stimopt.errors import StimoptError


class ConsoleProgress(Observer):
    """A tqdm bar over what the budget counts (evaluations, or presentations) with the best response so far."""

    def on_start(self, run):
        from tqdm import tqdm

        self.counted = "n_presentations" if getattr(run, "budget_counts", "stimuli") == "presentations" else "n_evaluations"
        unit = "presentation" if self.counted == "n_presentations" else "eval"
        self.bar = tqdm(total=run.budget, initial=getattr(run.progress, self.counted), unit=unit, dynamic_ncols=True,
                        mininterval=0.5)

    def on_generation(self, run, record):
        self.bar.update(record[self.counted] - self.bar.n)
        self.bar.set_postfix(best=f"{record['best_so_far']:.4g}", refresh=False)

    def on_end(self, run, summary):
        if hasattr(self, "bar"):
            self.bar.close()


def offline_means_offline(mode: str = "offline") -> None:
    """Make W&B's offline mode open no connection and resolve no host name.

    ``wandb.init(mode="offline")`` alone is not enough: wandb's process-wide settings (which its
    telemetry reads, not ``init``'s arguments) still say online, and its OpenTelemetry proxy probes
    the API host (a DNS lookup of api.*, then a POST) on a thread. The environment variables make
    the process-wide settings offline too; error reporting (Sentry) goes off; and wandb's analytics
    switch turns the telemetry off for the process in case its settings were read earlier.
    """
    os.environ["WANDB_MODE"] = mode
    os.environ["WANDB_ERROR_REPORTING"] = "false"
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")  # git metadata: local, but nothing a run needs
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy

        opentelemetry_proxy.disable()
    except (ImportError, AttributeError):  # older/newer wandb without this module: the env vars suffice
        pass


class WandbLogger(Observer):
    """Logs config, per-generation best/mean/best-so-far and, at the end, the best stimuli.

    ``mode=offline`` (default) needs no account or network: runs land in ``<run_dir>/wandb`` and
    ``wandb sync`` uploads them later. ``wandb.finish()`` always runs, so one failed job does not
    sink a sweep.
    """

    def __init__(self, cfg, run_dir: Path, project: str = "stimopt", entity=None, mode: str = "offline", log_images: bool = True, **_):
        import wandb

        if mode not in ("offline", "online", "disabled"):
            raise StimoptError(f"logger.mode must be offline, online or disabled, got '{mode}'")
        os.environ.setdefault("WANDB_SILENT", "true")
        if mode != "online":
            offline_means_offline(mode)
        self.wandb = wandb
        self.log_images = log_images
        self.wrun = wandb.init(
            project=project, entity=entity, mode=mode, dir=str(run_dir),
            config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True, **({} if mode == "online" else {"mode": mode})),
        )

    def on_generation(self, run, record):
        self.wrun.log({k: v for k, v in record.items() if k != "generation"}, step=record["generation"])

    def on_end(self, run, summary):
        try:
            for key, value in summary.items():
                if isinstance(value, (int, float, str)) or value is None:
                    self.wrun.summary[key] = value
            if self.log_images:
                from stimopt.report import best_images

                images, responses = best_images(run)
                self.wrun.log({"best": [self.wandb.Image(img, caption=f"{r:.4g}") for img, r in zip(images, responses)]})
        finally:
            self.wrun.finish()


def make_observers(cfg, run_dir: Path, progress: bool = True) -> list[Observer]:
    obs: list[Observer] = [ConsoleProgress()] if progress else []
    logger = cfg.get("logger") or {}
    name = logger.get("name", "none")
    if name == "wandb":
        opts = {k: v for k, v in OmegaConf.to_container(logger, resolve=True).items() if k != "name"}
        obs.append(WandbLogger(cfg, run_dir, **opts))
    elif name != "none":
        raise StimoptError(f"unknown logger '{name}'; choose logger=wandb or logger=none")
    return obs
