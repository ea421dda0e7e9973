"""Detectron2's trainer, with what FCOS needs: COCO (or Pascal VOC) evaluation and crowd
boxes kept."""

import logging
import os
import re
from collections import OrderedDict

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm

from .classes import classes_of_dataset, write_classes
from .data.dataset_mapper import CrowdAwareDatasetMapper, EightBitDatasetMapper
from .modeling.tta import FCOSWithTTA

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation (Pascal VOC's for VOC datasets), crowd boxes kept
    for FCOS, 16-bit images read right, and the classes (names, dataset category ids) written
    to OUTPUT_DIR/classes.json."""

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)  # builds the training loader, which loads the datasets
        if comm.is_main_process() and cfg.DATASETS.TRAIN:
            write_classes(cfg.OUTPUT_DIR, classes_of_dataset(cfg.DATASETS.TRAIN[0]))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str = None):
        """Detectron2's ``PascalVOCDetectionEvaluator`` for a dataset whose metadata has
        ``evaluator_type`` "pascal_voc" (``--register-voc``, Detectron2's built-in VOC sets):
        AP50 as VOC computes it, AP75, and AP averaged over IoU 0.5:0.95, from the XML files
        (it writes nothing to ``output_folder``). ``COCOEvaluator`` for every other dataset."""
        if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as error:
            raise FloatingPointError(self._non_finite_loss_message(str(error))) from error

    def _non_finite_loss_message(self, detectron2_message: str) -> str:
        """Say which loss terms went non-finite, at which iteration, and what is on disk."""
        # Detectron2's message holds the loss dict, e.g. "'loss_fcos_loc': np.float64(nan)".
        terms = re.findall(r"'(\w+)': [^,}]*?(?:nan|inf)", detectron2_message)
        checkpoint = self.checkpointer.get_checkpoint_file() or "none written yet"
        return (
            f"Non-finite loss at iteration {self.iter}: {', '.join(terms) or 'unknown term'}. "
            f"Last checkpoint on disk: {checkpoint}. ({detectron2_message})"
        )

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model):
        """Evaluate with test-time augmentation (``TEST.AUG``): FCOS with :class:`FCOSWithTTA`,
        R-CNNs with Detectron2's ``GeneralizedRCNNWithTTA``; results keyed ``<task>_TTA``."""
        logger.info("Running inference with test-time augmentation ...")
        if cfg.MODEL.META_ARCHITECTURE == "FCOS":
            model = FCOSWithTTA(cfg, model)
        else:
            model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((task + "_TTA", value) for task, value in results.items())

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        # Detectron2's test mapper, but reading 16-bit images right (for every model).
        return build_detection_test_loader(
            cfg, dataset_name, mapper=EightBitDatasetMapper(cfg, False)
        )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        # FCOS keeps crowd boxes (to ignore them); every model reads 16-bit images right.
        mapper = (
            CrowdAwareDatasetMapper
            if cfg.MODEL.META_ARCHITECTURE == "FCOS"
            else EightBitDatasetMapper
        )
        return build_detection_train_loader(cfg, mapper=mapper(cfg, True))


def check_num_gpus(num_gpus: int) -> None:
    """Refuse ``--num-gpus N`` when fewer than N GPUs are found, before anything starts.

    ``--num-gpus 1`` (the default) always runs: on the CPU when there is no GPU. Several
    processes need as many GPUs: Detectron2 wraps each process's model in
    DistributedDataParallel on GPU ``local_rank``, which does not exist otherwise.
    """
    found = torch.cuda.device_count()
    if num_gpus > 1 and num_gpus > found:
        raise SystemExit(
            f"--num-gpus {num_gpus}, but {found} GPU(s) found"
            + (
                ": run with --num-gpus 1, which trains on the CPU"
                if found == 0
                else f": use --num-gpus {found} or fewer"
            )
        )
