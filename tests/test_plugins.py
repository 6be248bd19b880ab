"""The plugin API: every hook, entry-point loading, STIMOPT_LOAD_PLUGINS, a broken plugin, the
third-party example package, `stimopt-plugins`, and composing/instantiating the config groups."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import stimopt
from stimopt import plugins
from conftest import FAST, cli_env, run_cli


class Constant(stimopt.Target):
    def __init__(self, value: float = 1.0):
        self.value = value

    def evaluate(self, images):
        return np.full(len(images), self.value, np.float32)


class BankOnly(stimopt.Optimizer):
    accepts = (stimopt.BankSpace,)

    def ask(self, n):
        return np.arange(n)

    def tell(self, codes, scores):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class Flat(stimopt.Generator):
    """Uniform grey images whose brightness is the code's first number."""

    def __init__(self, size: int = 8):
        self.size = size

    @property
    def space(self):
        return stimopt.ContinuousSpace(dim=2, low=0.0, high=1.0, init_mean=0.5, init_std=0.2)

    def generate(self, codes):
        import torch

        return torch.as_tensor(np.asarray(codes, np.float32)[:, :1, None, None]).expand(-1, 3, self.size, self.size).contiguous()


def _write_confs(conf: Path) -> None:
    (conf / "target").mkdir(parents=True)
    (conf / "target" / "constant.yaml").write_text(f"_target_: {__name__}.Constant\nvalue: 3.0\n")
    (conf / "generator").mkdir()
    (conf / "generator" / "flat.yaml").write_text(f"_target_: {__name__}.Flat\nsize: 8\n")


def _plugin_module(location: str):
    """An in-memory plugin implementing all four hooks; its config folder registered as ``location``."""
    mod = types.ModuleType("test_plugin_module")
    mod.register_targets = stimopt.hookimpl(lambda register: register("constant", Constant))
    mod.register_generators = stimopt.hookimpl(lambda register: register("flat", Flat))
    mod.register_optimizers = stimopt.hookimpl(lambda register: register("bank_only", BankOnly))
    mod.register_config_dirs = stimopt.hookimpl(lambda register: register(location))
    return mod


@pytest.fixture
def test_plugin(tmp_path):
    _write_confs(tmp_path / "conf")
    mod = _plugin_module(str(tmp_path / "conf"))
    plugins.register_plugin(mod, "testplugin")
    yield mod
    plugins.unregister_plugin("testplugin")


def test_every_hook_registers(test_plugin, tmp_path):
    info = next(i for i in plugins.plugin_infos() if i.name == "testplugin")
    assert info.hooks == ["register_config_dirs", "register_generators", "register_optimizers", "register_targets"]
    reg = plugins.registry()
    assert reg["target"]["constant"][1] == "testplugin"
    assert reg["generator"]["flat"][1] == "testplugin"
    assert reg["optimizer"]["bank_only"][1] == "testplugin"
    assert ("testplugin", str(tmp_path / "conf")) in plugins.config_dirs()
    # built-ins come through the very same hooks
    assert reg["target"]["cnn_unit"][1] == "cnn"
    assert {"fourier", "pixels"} <= set(reg["generator"])
    assert {"random", "nevergrad"} <= set(reg["optimizer"])


@pytest.mark.parametrize("way", ["folder", "file_uri", "pkg_uri"])
def test_register_config_dirs_accepts_hydras_search_path_forms(way, tmp_path, monkeypatch, compose):
    """register_config_dirs takes a folder path, a file:// URI or a pkg:// URI (Hydra's own forms)."""
    package = f"confpkg_{way}"
    conf = tmp_path / package / "conf"
    _write_confs(conf)
    (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    location = {"folder": str(conf), "file_uri": f"file://{conf}", "pkg_uri": f"pkg://{package}.conf"}[way]
    plugins.register_plugin(_plugin_module(location), "testplugin")
    try:
        assert ("testplugin", str(conf)) in plugins.config_dirs()
        cfg = compose(["target=constant", "generator=flat"])
        assert cfg.target.value == 3.0 and cfg.generator.size == 8
    finally:
        plugins.unregister_plugin("testplugin")


def test_registered_config_dir_is_on_hydras_search_path(test_plugin, compose):
    cfg = compose(["target=constant"])
    assert cfg.target._target_.endswith(".Constant") and cfg.target.value == 3.0


def test_unfit_trio_fails_at_composition_naming_what_fits(test_plugin, compose, tmp_path):
    from stimopt.experiment import build_run

    cfg = compose(["logger=none", "generator.size=32", "optimizer=random", "target=constant",
                   f"optimizer._target_={__name__}.BankOnly"])
    with pytest.raises(stimopt.StimoptError) as err:
        build_run(cfg, tmp_path / "run")
    msg = str(err.value)
    assert "optimizer 'bank_only' cannot search generator 'fourier' (continuous codes)" in msg
    assert "optimizers that fit 'fourier':" in msg and "random" in msg


def test_unknown_registered_name_lists_choices():
    with pytest.raises(stimopt.StimoptError, match=r"unknown target 'nope'; registered targets: .*cnn_unit"):
        plugins.lookup("target", "nope")


def test_stimopt_plugins_lists_builtins_and_example(tmp_path):
    out = json.loads(run_cli(["--json"], tmp_path, program="stimopt-plugins").stdout)
    by_name = {p["name"]: p for p in out}
    assert by_name["cnn"]["registers"] == {"target": ["cnn_unit"]} and by_name["cnn"]["package"] == "stimopt"
    example = by_name["example"]
    assert example["version"] == "0.2.0" and example["package"] == "stimopt-example-plugin"
    assert example["registers"] == {"target": ["edge_neuron"], "generator": ["gabor"], "optimizer": ["hillclimb"]}
    assert example["config_dirs"] and example["config_dirs"][0].endswith("conf")
    assert "register_targets" in example["hooks"]
    text = run_cli([], tmp_path, program="stimopt-plugins").stdout
    assert "example: package stimopt-example-plugin 0.2.0" in text


def test_load_plugins_env_restricts(tmp_path):
    env = cli_env(STIMOPT_LOAD_PLUGINS="cnn,core")
    out = json.loads(run_cli(["--json"], tmp_path, program="stimopt-plugins", env=env).stdout)
    assert sorted(p["name"] for p in out) == ["cnn", "core"]


def test_a_broken_plugin_is_named_and_the_rest_work(tmp_path):
    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin" / "__init__.py").write_text("raise ImportError('needs libfoo')\n")
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[stimopt]\nbroken = broken_plugin\n")
    env = cli_env(PYTHONPATH=str(site))
    out = json.loads(run_cli(["--json"], tmp_path, program="stimopt-plugins", env=env).stdout)
    broken = next(p for p in out if p["name"] == "broken")
    assert "needs libfoo" in broken["error"]
    assert any(p["name"] == "cnn" and not p["error"] for p in out)
    proc = run_cli([*FAST, "budget=20"], tmp_path, env=env)
    assert "plugin 'broken' failed to load (ImportError: needs libfoo); the others work" in proc.stderr


def test_third_party_example_plugin_end_to_end(tmp_path):
    proc = run_cli(["target=edge_neuron", "optimizer=hillclimb", "logger=none", "generator.size=32", "budget=200",
                    "hydra.run.dir=run"], tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["target"] == "edge_neuron(45.0 deg)" and summary["optimizer_name"] == "hillclimb"
    assert summary["best_response"] > 0 and "best response" in proc.stdout


@pytest.mark.parametrize("group", ["target", "generator", "optimizer", "logger", "objective", "noise", "experiment"])
def test_every_config_group_option_composes(group, compose):
    options = plugins.group_options(group)
    assert options
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert group == "experiment" or cfg[group] is not None  # presets are @package _global_


CORE_TRIOS = [
    ("generator", "fourier"), ("generator", "pixels"), ("optimizer", "random"), ("optimizer", "cmaes"),
    ("optimizer", "nevergrad"), ("target", "cnn_unit"), ("target", "edge_neuron"), ("optimizer", "hillclimb"),
    ("generator", "gabor"),
]


@pytest.mark.parametrize("group,option", CORE_TRIOS)
def test_core_and_example_options_instantiate_and_step(group, option, compose, tmp_path):
    from stimopt.experiment import build_run

    base = FAST if (group, option) != ("target", "edge_neuron") else ["logger=none", "generator.size=32"]
    cfg = compose([*base, f"{group}={option}", "budget=40"])
    run = build_run(cfg, tmp_path / "run")
    run.step()
    run.step()
    assert run.store.n_evaluations() == 40 and np.isfinite(run.progress.best_response)
    run.store.close()


# -- one way to pick a class: _target_, restricted to the contract classes --------------------------------

@pytest.mark.parametrize("kind", ["target", "generator", "optimizer"])
def test_every_group_config_selects_a_registered_class_with_target(kind):
    import yaml
    from hydra.utils import get_class

    registered = {cls for cls, _ in plugins.registry()[kind].values()}
    for _, folder in plugins.config_dirs():
        for path in sorted((Path(folder) / kind).glob("*.yaml")):
            node = yaml.safe_load(path.read_text())
            assert "_target_" in node, f"{path} selects no class with _target_"
            assert get_class(node["_target_"]) in registered, f"{path}: {node['_target_']} is not a registered {kind}"


def test_target_must_be_a_contract_subclass(compose, tmp_path):
    from stimopt.experiment import build_run

    cfg = compose([*FAST, "budget=40", "optimizer._target_=subprocess.Popen"])
    with pytest.raises(stimopt.StimoptError) as err:
        build_run(cfg, tmp_path / "run")
    assert str(err.value) == "optimizer._target_ must name a stimopt.Optimizer subclass, got 'subprocess.Popen'"
    assert not (tmp_path / "run").exists()


def test_name_does_not_select_a_class():
    from omegaconf import OmegaConf

    from stimopt.experiment import resolve_class

    with pytest.raises(stimopt.StimoptError, match=r"needs '_target_: stimopt_plugins\.cnn\.CNNUnit'"):
        resolve_class("target", OmegaConf.create({"name": "cnn_unit"}))


def test_component_name_is_the_registered_name(compose):
    from stimopt.experiment import component_name

    cfg = compose(["optimizer=hillclimb", "generator=gabor"])
    assert component_name(cfg.optimizer) == "hillclimb" and component_name(cfg.generator) == "gabor"
    assert component_name(cfg.target) == "cnn_unit"


# -- family pairings are experiment presets; optimizer configs leave the generator alone -----------------

def test_optimizer_configs_do_not_override_the_generator(compose):
    for optimizer in plugins.group_options("optimizer"):
        assert compose([f"optimizer={optimizer}"]).generator._target_.endswith("FourierGenerator"), optimizer


@pytest.mark.parametrize("preset,generator,optimizer", [
    ("imagebeagle", "imagebeagle", "walk"), ("surrogate", "imagebeagle", "surrogate"), ("xdream", "deepsim", "ga"),
    ("vislens", "vislens", "prior_shift"),
])
def test_experiment_presets_pick_the_family_pairing(preset, generator, optimizer, compose):
    from stimopt.experiment import component_name

    cfg = compose([f"experiment={preset}"])
    assert (component_name(cfg.generator), component_name(cfg.optimizer)) == (generator, optimizer)
    assert component_name(compose([f"experiment={preset}", f"optimizer={optimizer}"]).optimizer) == optimizer


def test_a_sweep_over_optimizers_keeps_one_generator(compose):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = OverridesParser.create().parse_overrides(["optimizer=ga,nes,cmaes"])[0].sweep_string_iterator()
    generators = {compose([f"optimizer={o}"]).generator._target_ for o in choices}
    assert generators == {"stimopt_plugins.image_codes.FourierGenerator"}
    rig = compose(["experiment=rig"])
    assert rig.target._target_.endswith("RigTarget") and rig.on_bad_response == "skip"


def test_an_unfit_trio_names_what_fits_and_the_preset(compose, tmp_path):
    from stimopt.experiment import build_run

    with pytest.raises(stimopt.StimoptError) as err:
        build_run(compose([*FAST, "budget=40", "optimizer=walk"]), tmp_path / "run")
    msg = str(err.value)
    assert "optimizer 'walk' cannot search generator 'fourier'" in msg and "generators that fit 'walk': imagebeagle" in msg
    assert msg.endswith("or use experiment=imagebeagle") and "\n" not in msg


# -- the third-party generator, the hook guard, packaging ---------------------------------------------------

def test_third_party_generator_runs_from_the_command_line(tmp_path):
    run_cli(["generator=gabor", "generator.n_gabors=2", "target=edge_neuron", "optimizer=cmaes", "logger=none",
             "budget=40", "hydra.run.dir=run"], tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["generator_name"] == "gabor" and summary["generator"] == "gabor(2 patches, 64 px)"
    assert summary["n_evaluations"] == 40 and summary["best_response"] > 0


def test_every_hookspec_has_a_test_and_docs():
    """datasette's guard: a hookspec nobody tests (or documents) fails here."""
    import ast

    from stimopt import hookspecs

    specs = sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "stimopt_spec"))
    assert specs == ["register_config_dirs", "register_generators", "register_optimizers", "register_targets"]
    tree = ast.parse(Path(__file__).read_text())
    bodies = [ast.unparse(node) for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and node.name != "test_every_hookspec_has_a_test_and_docs"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in specs:
        assert any(name in body for body in bodies), f"hookspec {name} has no test in tests/test_plugins.py"
        assert f"`{name}(register)`" in readme, f"hookspec {name} is not documented in README.md"
        assert getattr(hookspecs, name).__doc__, f"hookspec {name} has no docstring"


def test_pyproject_lists_every_package_and_config_folder():
    """A folder missing from [tool.setuptools] packages makes setuptools warn (and ship no configs)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    for name, folder in tool["package-dir"].items():
        for d in [root / folder, *(root / folder).rglob("*")]:
            if d.is_dir() and d.name != "__pycache__" and not d.name.endswith(".egg-info"):
                package = ".".join((name, *d.relative_to(root / folder).parts))
                assert package in listed, f"{package} ({d.relative_to(root)}) is missing from pyproject's packages"
