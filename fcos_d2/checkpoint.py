"""Loading weights into an FCOS model, refusing a classifier trained for other classes.

fvcore's checkpointer skips a parameter whose shape differs and only warns, so a
checkpoint of another dataset would evaluate or export a random classifier without
saying so. ``check_num_classes`` makes that an error, except when fine-tuning.
"""

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

CLASSIFIER_KEY = "head.cls_logits.weight"


class NumClassesError(ValueError):
    """The checkpoint's classifier has another number of classes than the model."""


def checkpoint_num_classes(weights: str):
    """The number of classes of an fcos_d2 checkpoint's classifier, or None if it has none
    (another kind of model, a backbone only, or a file that is not on this machine)."""
    if not weights or not os.path.isfile(weights) or not weights.endswith((".pth", ".pt")):
        return None
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else {}
    classifier = state.get(CLASSIFIER_KEY)
    return None if classifier is None else int(classifier.shape[0])


def check_num_classes(model: nn.Module, weights: str, fine_tuning: bool) -> None:
    """Refuse ``weights`` whose classifier was trained for another number of classes.

    Args:
        model: the model the weights are for; models without an FCOS classifier pass.
        weights: MODEL.WEIGHTS.
        fine_tuning: training starts from these weights: the classifier then starts
            afresh, which is said once, not refused.

    Raises:
        NumClassesError: naming both counts and the file, when not fine-tuning.
    """
    head = getattr(model, "head", None)
    classifier = getattr(head, "cls_logits", None)
    if not isinstance(classifier, nn.Conv2d):
        return
    found = checkpoint_num_classes(weights)
    expected = classifier.out_channels
    if found is None or found == expected:
        return
    if fine_tuning:
        logger.warning(
            "Fine-tuning: %s was trained for %d classes, MODEL.FCOS.NUM_CLASSES is %d; the "
            "classifier (head.cls_logits) starts from its initialisation, the rest is loaded.",
            weights,
            found,
            expected,
        )
        return
    raise NumClassesError(
        f"MODEL.WEIGHTS {weights} was trained for {found} classes, but MODEL.FCOS.NUM_CLASSES "
        f"is {expected}: evaluating, exporting or predicting with it would use a random "
        f"classifier. Set MODEL.FCOS.NUM_CLASSES {found}, or train (fine-tune) from it."
    )
