#!/usr/bin/env python
"""Train and evaluate FCOS, or any Detectron2 YAML model, with Detectron2's trainer.

    python train_net.py --config-file configs/FCOS_R_50_1x.yaml [--num-gpus 8]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume
    python train_net.py --register-coco my_train ann.json images/ --config-file ... \
        DATASETS.TRAIN '("my_train",)'
    python train_net.py --register-voc voc_train VOCdevkit/VOC2012 train --config-file ... \
        DATASETS.TRAIN '("voc_train",)' MODEL.FCOS.NUM_CLASSES 20
"""

import logging

# isort: off
import fcos_d2  # noqa: F401  (first: registers FCOS, silences third-party warnings)
# isort: on

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from fcos_d2.checkpoint import check_num_classes
from fcos_d2.config import fall_back_to_available_hardware, merge_config
from fcos_d2.data.coco_dataset import add_register_coco_argument, register_coco_datasets
from fcos_d2.data.voc_dataset import add_register_voc_argument, register_voc_datasets
from fcos_d2.engine import Trainer, check_num_gpus

logger = logging.getLogger("fcos_d2")


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
    register_voc_datasets(args.register_voc)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        if not args.resume:
            check_num_classes(model, cfg.MODEL.WEIGHTS, fine_tuning=False)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    check_num_classes(trainer.model, cfg.MODEL.WEIGHTS, fine_tuning=True)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # The evaluation DefaultTrainer runs after the last iteration (None if it did not).
    return getattr(trainer, "_last_eval_results", None)


def argument_parser():
    """Detectron2's standard arguments plus ``--register-coco NAME JSON IMAGE_ROOT`` and
    ``--register-voc NAME DIR SPLIT``."""
    parser = default_argument_parser()
    add_register_coco_argument(parser)
    add_register_voc_argument(parser)
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    check_num_gpus(args.num_gpus)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
