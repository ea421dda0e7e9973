#!/usr/bin/env python
"""Train and evaluate FCOS, or any Detectron2 YAML model, with Detectron2's trainer.

    python train_net.py --config-file configs/FCOS_R_50_1x.yaml [--num-gpus 8]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume
    python train_net.py --register-coco my_train ann.json images/ --config-file ... \
        DATASETS.TRAIN '("my_train",)'
"""

import logging
import os
import re
from typing import List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fcos_d2 import add_fcos_config
from fcos_d2.coco_dataset import register_coco_datasets
from fcos_d2.dataset_mapper import CrowdAwareDatasetMapper

logger = logging.getLogger("fcos_d2")


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation, and crowd boxes kept for FCOS."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str = None):
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
    def build_train_loader(cls, cfg: CfgNode):
        if cfg.MODEL.META_ARCHITECTURE != "FCOS":
            return super().build_train_loader(cfg)
        return build_detection_train_loader(cfg, mapper=CrowdAwareDatasetMapper(cfg, True))


def merge_config(config_file: str, opts: List[str]) -> CfgNode:
    """Config from the FCOS defaults, the file, and KEY VALUE pairs (not frozen)."""
    cfg = get_cfg()
    add_fcos_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    return cfg


def fall_back_to_available_hardware(cfg: CfgNode) -> List[str]:
    """Run on the CPU when no GPU is found, and in float32 there; says what it changed."""
    changes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        changes.append("No GPU found: running on the CPU (MODEL.DEVICE cpu)")
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        # Detectron2's AMPTrainer autocasts on CUDA only (and asserts a GPU at step 1).
        cfg.SOLVER.AMP.ENABLED = False
        changes.append(
            f"SOLVER.AMP.ENABLED needs a CUDA device, MODEL.DEVICE is {cfg.MODEL.DEVICE}: "
            "training in float32"
        )
    return changes


def build_config(config_file: str, opts: List[str]) -> CfgNode:
    """Frozen config from the FCOS defaults, the file, and KEY VALUE pairs, runnable here."""
    cfg = merge_config(config_file, opts)
    for change in fall_back_to_available_hardware(cfg):
        logger.warning(change)
    cfg.freeze()
    return cfg


def setup(args) -> CfgNode:
    """The config of a run, with Detectron2's logging and config dump in OUTPUT_DIR."""
    cfg = merge_config(args.config_file, args.opts)
    changes = fall_back_to_available_hardware(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # fcos_d2's messages, these first, go to OUTPUT_DIR/log.txt with Detectron2's.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fcos_d2")
    for change in changes:
        logger.warning(change)
    return cfg


def main(args):
    register_coco_datasets(args.register_coco)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # The evaluation DefaultTrainer runs after the last iteration (None if it did not).
    return getattr(trainer, "_last_eval_results", None)


def argument_parser():
    """Detectron2's standard arguments plus ``--register-coco NAME JSON IMAGE_ROOT``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME before the config uses it (repeatable)",
    )
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
