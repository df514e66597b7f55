"""The names of the networks and saliency methods, without torch.

The command line offers these as choices before it knows whether it will run a network at all: ``lsm --help``,
``lsm jobs`` or ``lsm label`` read them here and so never import torch (seconds of CPU). The registries that
hold the networks (:data:`lsm_core.ml.nets.REGISTRY`) and the methods (:data:`lsm_core.ml.saliency.METHODS`)
refuse a name that is not here, and a test holds the two in agreement.
"""

from __future__ import annotations

# the architectures of lsm_core.ml.nets, in the order they are registered there
ARCHITECTURES: tuple[str, ...] = ("resnet50_paper", "resnet18", "small_cnn", "tiny_cnn")

# the saliency methods of lsm_core.ml.saliency
SALIENCY_METHODS: tuple[str, ...] = ("scorecam", "gradcam", "ig")
