"""``target=module``: a lab's own torch model (a digital twin, a fitted CNN) as a stimopt target.

    stimopt target=module target.factory=my_lab.models:build_twin target.checkpoint=twin.pt \
        target.output=[3,7] target.input=gray target.size=64

- ``factory``: ``package.module:callable``. The named module is imported (nothing else is: no
  attribute path is walked through other modules) and ``callable(**factory_kwargs)`` must return a
  ``torch.nn.Module``. It must be a class or a Python function of the lab's own code: built-in
  functions and the standard library's callables are refused, so a config cannot make stimopt
  call ``os:system`` or ``shutil:rmtree``.
- ``checkpoint``: a state dict saved with ``torch.save(model.state_dict(), PATH)``, read with
  ``torch.load(weights_only=True)`` (no pickled code runs); null keeps the factory's weights.
- ``output``: which neuron(s) of the model's ``[B, n]`` output: an index, or a list of indices.
  A list gives ``[B, k]`` responses (``n_outputs = k``); the target does not combine them, the
  run's objective does (``objective=single``, the default, averages them; ``objective=weighted``,
  ``mean``, ``contrast``, ``terms``, ``pattern`` combine them otherwise).
- ``input``: ``rgb`` (images as they are) or ``gray`` (luminance, one channel: ``[B, 1, H, W]``);
  ``size``: images are resized (bilinear, antialiased) to ``size`` x ``size``; ``mean``/``std``:
  optional per-channel normalization applied after that.

The target is differentiable: ``optimizer=mei`` and ``latent_gradient`` follow its gradients.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys

import torch
import torch.nn.functional as F

import stimopt
from stimopt.device import resolve_device
from stimopt.errors import StimoptError
from stimopt.models import _load_state_file

FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
LUMINANCE = (0.299, 0.587, 0.114)


def _stdlib(module_name: str) -> bool:
    return module_name.split(".")[0] in sys.stdlib_module_names or module_name == "builtins"


def load_factory(spec: str):
    """The callable ``package.module:callable`` names, after checking the spec's form and the callable's kind."""
    if not isinstance(spec, str) or not FACTORY.match(spec.strip()):
        raise StimoptError(f"target.factory must be 'package.module:callable' (a function or class that returns the "
                           f"nn.Module), got '{spec}'")
    module_name, attr = spec.strip().split(":")
    if _stdlib(module_name):
        raise StimoptError(f"target.factory={spec} names the standard library; give your own model's factory "
                           "(package.module:callable returning an nn.Module)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StimoptError(f"target.factory={spec}: module '{module_name}' cannot be imported ({exc}); put its folder "
                           "on PYTHONPATH or pip install its package") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise StimoptError(f"target.factory={spec}: module '{module_name}' has no '{attr}'")
    is_class = isinstance(fn, type)
    if not (is_class or inspect.isfunction(fn)) or _stdlib(getattr(fn, "__module__", None) or "builtins"):
        raise StimoptError(f"target.factory={spec} is not a class or Python function of your code; give the "
                           "callable that builds your nn.Module")
    return fn


class ModuleTarget(stimopt.Target):
    """A torch ``nn.Module`` built by ``factory``; the responses are ``output`` of its ``[B, n]`` output."""

    differentiable = True

    def __init__(self, factory: str | None = None, checkpoint: str | None = None, output=0, input: str = "rgb",
                 size: int | None = None, mean=None, std=None, factory_kwargs: dict | None = None, device: str = "auto"):
        if not factory:
            raise StimoptError("target=module needs target.factory=package.module:callable (it builds your nn.Module)")
        if input not in ("rgb", "gray"):
            raise StimoptError(f"target.input must be rgb or gray, got '{input}'")
        if size is not None and int(size) <= 0:
            raise StimoptError(f"target.size must be a positive number of pixels or null, got {size}")
        self.device = resolve_device(device)
        self.factory, self.checkpoint, self.input = str(factory), checkpoint, input
        self.size = None if size is None else int(size)
        fn = load_factory(self.factory)
        if checkpoint is not None and not os.path.isfile(str(checkpoint)):
            raise StimoptError(f"target.checkpoint={checkpoint} does not exist: put the state dict saved with "
                               f"torch.save(model.state_dict(), PATH) at that path (or set target.checkpoint=null)")
        try:
            net = fn(**dict(factory_kwargs or {}))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StimoptError(f"target.factory={self.factory} failed: {type(exc).__name__}: {first}") from None
        if not isinstance(net, torch.nn.Module):
            raise StimoptError(f"target.factory={self.factory} returned a {type(net).__name__}, not a torch nn.Module")
        if checkpoint is not None:
            _load_state_file(net, str(checkpoint), self.factory)
        self.net = net.eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        channels = 1 if input == "gray" else 3
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        for name, v in (("mean", self.mean), ("std", self.std)):
            if v is not None and v.shape[1] not in (1, channels):
                raise StimoptError(f"target.{name} has {v.shape[1]} values; give 1 or {channels} (target.input={input})")
        idx = list(output) if isinstance(output, (list, tuple)) or type(output).__name__ == "ListConfig" else [output]
        try:
            self.outputs = [int(i) for i in idx]
        except (TypeError, ValueError):
            raise StimoptError(f"target.output must be an index or a list of indices, got {output}") from None
        self.single = not isinstance(output, (list, tuple)) and type(output).__name__ != "ListConfig"
        if not self.outputs:
            raise StimoptError("target.output is an empty list; give an index or a list of indices")
        probe = torch.full((1, 3, self.size or 64, self.size or 64), 0.5, device=self.device)
        try:
            with torch.no_grad():
                out = self._forward(probe)
        except StimoptError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StimoptError(f"model from {self.factory} fails on a {list(self._prepare(probe).shape)} image batch "
                               f"({type(exc).__name__}: {first}); set target.size/target.input to what it takes") from None
        n = out.shape[1]
        bad = [i for i in self.outputs if not 0 <= i < n]
        if bad:
            raise StimoptError(f"target.output {bad[0]} is out of range: the model from {self.factory} has {n} outputs (0..{n - 1})")
        self.n_outputs = 1 if self.single else len(self.outputs)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if self.size is not None and (x.shape[-1] != self.size or x.shape[-2] != self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        if self.input == "gray":
            w = torch.tensor(LUMINANCE, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(dim=1, keepdim=True)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(self._prepare(images))
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise StimoptError(f"the model from {self.factory} returned {shape}; target=module reads a [B, n] output tensor")
        return out

    def evaluate(self, images):
        out = self._forward(images)[:, self.outputs].float()
        return out[:, 0] if self.single else out

    def describe(self) -> str:
        which = self.outputs[0] if self.single else self.outputs
        return f"module {self.factory}[{which}]" + (f" ({os.path.basename(str(self.checkpoint))})" if self.checkpoint else "")
