"""train_net.py's own functions in-process: train, evaluate, --eval-only, --resume,
--register-coco. Tiny images, a few iterations."""

import json

import pytest
import torch

import train_net
from fcos_d2.coco_dataset import DatasetError
from fcos_d2.datasets import generate_shapes_split

from conftest import QUICK_CONFIG


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """Tiny train and val splits of the shapes dataset, as --register-coco arguments."""
    root = tmp_path_factory.mktemp("shapes")
    args = []
    for split, count in (("train", 8), ("val", 4)):
        json_path = generate_shapes_split(str(root), split, count, 64, seed=7, progress=False)
        args += ["--register-coco", f"tiny_{split}", json_path, str(root / split)]
    return args


def run(register_args, output_dir, *extra, opts=()):
    """train_net.main on the quick config with the tiny datasets."""
    args = train_net.argument_parser().parse_args(
        [
            *register_args,
            "--config-file",
            str(QUICK_CONFIG),
            *extra,
            "OUTPUT_DIR",
            str(output_dir),
            "DATASETS.TRAIN",
            "('tiny_train',)",
            "DATASETS.TEST",
            "('tiny_val',)",
            # An untrained model scores about PRIOR_PROB: keep its detections for COCOeval.
            "MODEL.FCOS.SCORE_THRESH_TEST",
            "0.001",
            *opts,
        ]
    )
    return train_net.main(args)


@pytest.fixture(scope="module")
def trained(tiny_shapes, tmp_path_factory):
    """Output dir and results of a 4-iteration training run."""
    output_dir = tmp_path_factory.mktemp("train")
    results = run(tiny_shapes, output_dir)
    return output_dir, results


def test_training_checkpoints_and_evaluates(trained):
    output_dir, results = trained
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert 0 <= results["bbox"]["AP50"] <= 100  # a real number: there were detections
    checkpoint = torch.load(output_dir / "model_final.pth", weights_only=False)
    assert checkpoint["iteration"] == 3
    assert (output_dir / "last_checkpoint").read_text().strip() == "model_final.pth"
    metrics = [json.loads(line) for line in open(output_dir / "metrics.json")]
    assert any("loss_fcos_cls" in m for m in metrics)


def test_eval_only_reproduces_the_ap(tiny_shapes, trained, tmp_path):
    output_dir, results = trained
    # Registered names persist in-process: register the datasets only once.
    again = run([], tmp_path, "--eval-only", opts=["MODEL.WEIGHTS", str(output_dir / "model_final.pth")])
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)


def test_resume_continues_from_the_saved_iteration(trained):
    output_dir, _ = trained
    cfg = train_net.build_config(
        str(QUICK_CONFIG),
        ["OUTPUT_DIR", str(output_dir), "DATASETS.TRAIN", "('tiny_train',)",
         "DATASETS.TEST", "('tiny_val',)", "SOLVER.MAX_ITER", "6"],
    )
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 4
    trainer.train()
    assert torch.load(output_dir / "model_final.pth", weights_only=False)["iteration"] == 5


def test_bad_register_coco_names_the_file_and_writes_nothing(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{oops")
    output_dir = tmp_path / "out"
    with pytest.raises(DatasetError, match="broken.json"):
        run(["--register-coco", "broken", str(bad), str(tmp_path)], output_dir)
    assert not output_dir.exists()


def test_detectron2_mask_rcnn_yaml_runs_unchanged(tiny_shapes, tmp_path):
    from detectron2 import model_zoo

    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"),
            "MODEL.WEIGHTS", "",
            "MODEL.ROI_HEADS.NUM_CLASSES", "4",
            "DATASETS.TRAIN", "('tiny_train',)",
            "DATASETS.TEST", "('tiny_val',)",
            "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.BASE_LR", "0.001",
            "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
            "OUTPUT_DIR", str(tmp_path),
        ]
    )
    train_net.main(args)  # the tiny_shapes fixture registered the datasets
    assert (tmp_path / "model_final.pth").exists()
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any("loss_mask" in m for m in metrics)  # the polygon masks were used
