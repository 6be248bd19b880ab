"""Model targets fitted to recorded data: the V4 ensemble model and fMRI/EEG encoders.

Fitting (``stimopt-fit``, see :mod:`stimopt.fit` for the fit-function contract):

- :func:`fit_v4_ensemble` (paper A.1.1, :mod:`.ensemble`): a frozen backbone's features -> an
  ensemble of small CNNs trained member by member; the prediction is the ensemble mean.
- :func:`fit_encoder` (:mod:`.encoder`): frozen backbone features (any model/layer) -> ridge
  regression, one alpha per output (ROI or channel); held-out R^2 per output.
- :func:`match_from_config` (:mod:`.matching`): greedy matching of model neurons to the neurons
  recorded in a new session by R^2 on shared images (``stimopt-fit mode=match``).

Targets (:mod:`.targets`): ``target=v4_ensemble target.checkpoint=PATH target.neuron=K`` (an index,
a name, or a list of them -> [B, k] outputs for the objective) and ``target=encoder
target.checkpoint=PATH target.roi=FFA``; batched, on the GPU when present, differentiable.

Backbones (:mod:`.backbone`): any torchvision/timm layer; transformer layers with
``model.token=cls|mean|INDEX``. The paper's ResNet-50 has no offline weights here; when a pretrained
backbone cannot be loaded and ``fallback_backbone`` is set, the fit uses it instead and says so
(printed and in the report). Random-weight backbones are initialized from ``seed`` so a checkpoint
rebuilds exactly the same one. Checkpoints (:mod:`.checkpoints`) hold tensors and plain values
only and are read with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import stimopt

from .backbone import Backbone, backbone_from_config, backbone_from_spec
from .checkpoints import CHECKPOINT_VERSION, DEMO_DATA, DEMO_FITS, demo_checkpoint, load_checkpoint, read_checkpoint
from .data import dataset_from_config, r2_score, split_indices
from .encoder import fit_encoder, pool_features
from .ensemble import EnsembleMember, EnsembleModel, ResidualLayer, fit_v4_ensemble, train_member
from .matching import match_from_config, match_neurons
from .targets import EncoderTarget, V4EnsembleTarget, select_outputs

__all__ = [
    "Backbone", "backbone_from_config", "backbone_from_spec", "CHECKPOINT_VERSION", "DEMO_DATA", "DEMO_FITS",
    "demo_checkpoint", "load_checkpoint", "read_checkpoint", "dataset_from_config", "r2_score", "split_indices",
    "fit_encoder", "pool_features", "EnsembleMember", "EnsembleModel", "ResidualLayer", "fit_v4_ensemble",
    "train_member", "match_from_config", "match_neurons", "EncoderTarget", "V4EnsembleTarget", "select_outputs",
]


@stimopt.hookimpl
def register_targets(register):
    register("v4_ensemble", V4EnsembleTarget)
    register("encoder", EncoderTarget)


@stimopt.hookimpl
def register_config_dirs(register):
    register(str(Path(__file__).parent / "conf"))
