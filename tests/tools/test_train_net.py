"""train_net.py's own functions in-process: train, evaluate, --eval-only, --resume,
--register-coco, --register-voc (with the visualizer and demo.py after it), the AMP
fallback in the run log. Tiny images, a few iterations."""

import json
import logging
import math

import pytest
import torch
from conftest import QUICK_CONFIG
from voc_fixture import write_voc_dataset

import train_net
from fcos_d2.config import setup_cfg
from fcos_d2.data.coco_dataset import DatasetError
from fcos_d2.data.datasets import generate_shapes_split
from fcos_d2.data.voc_dataset import VOC_CLASSES
from fcos_d2.engine import Trainer

pytestmark = pytest.mark.slow  # end to end: run by `make test`, not by `-m "not slow"`


def test_train_net_logs_the_fallback_to_the_run_log(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            str(QUICK_CONFIG),
            "SOLVER.AMP.ENABLED",
            "True",
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    cfg = train_net.setup(args)
    assert not cfg.SOLVER.AMP.ENABLED
    assert "SOLVER.AMP.ENABLED needs a CUDA device" in (tmp_path / "log.txt").read_text()


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


PREDICTIONS = ("inference", "tiny_val", "coco_instances_results.json")


def test_eval_only_reproduces_the_predictions(tiny_shapes, trained, tmp_path):
    """--eval-only with the saved weights gives the very detections the training run's
    evaluation saved (the weights were loaded, not a fresh initialisation)."""
    output_dir, results = trained
    # Registered names persist in-process: register the datasets only once.
    again = run(
        [], tmp_path, "--eval-only", opts=["MODEL.WEIGHTS", str(output_dir / "model_final.pth")]
    )
    trained_predictions = json.loads(output_dir.joinpath(*PREDICTIONS).read_text())
    evaluated = json.loads(tmp_path.joinpath(*PREDICTIONS).read_text())
    assert len(trained_predictions) > 10
    assert evaluated == trained_predictions
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    # Without the weights: other detections (so the comparison above could fail).
    fresh = run([], tmp_path / "fresh", "--eval-only", opts=["MODEL.WEIGHTS", ""])
    assert (
        json.loads((tmp_path / "fresh").joinpath(*PREDICTIONS).read_text()) != trained_predictions
    )
    assert fresh is not None


def test_eval_only_refuses_weights_of_another_number_of_classes(trained, tmp_path):
    from fcos_d2.checkpoint import NumClassesError

    output_dir, _ = trained
    with pytest.raises(
        NumClassesError, match=r"trained for 4 classes, but MODEL.FCOS.NUM_CLASSES is 3"
    ):
        run(
            [],
            tmp_path,
            "--eval-only",
            opts=[
                "MODEL.WEIGHTS",
                str(output_dir / "model_final.pth"),
                "MODEL.FCOS.NUM_CLASSES",
                "3",
            ],
        )


def test_fine_tuning_from_weights_of_another_number_of_classes_says_so_once(
    trained, tmp_path, caplog
):

    from fcos_d2 import checkpoint

    output_dir, _ = trained
    checkpoint.logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=checkpoint.logger.name):
            run(
                [],
                tmp_path,
                opts=[
                    "MODEL.WEIGHTS",
                    str(output_dir / "model_final.pth"),
                    # 4 classes in the data: fine-tune to 5 (a 3-class head could not take them)
                    "MODEL.FCOS.NUM_CLASSES",
                    "5",
                    "SOLVER.MAX_ITER",
                    "1",
                    "DATASETS.TEST",
                    "()",
                ],
            )
    finally:
        checkpoint.logger.removeHandler(caplog.handler)
    # One record (the handler may see it twice: attached here and by propagation).
    said = {id(r) for r in caplog.records if r.getMessage().startswith("Fine-tuning:")}
    assert len(said) == 1 and "trained for 4 classes" in caplog.text


def test_resume_continues_from_the_saved_iteration(trained, tmp_path):
    import shutil

    output_dir = tmp_path / "resumed"
    shutil.copytree(trained[0], output_dir)  # the shared training run stays as it was
    cfg = setup_cfg(
        str(QUICK_CONFIG),
        [
            "OUTPUT_DIR",
            str(output_dir),
            "DATASETS.TRAIN",
            "('tiny_train',)",
            "DATASETS.TEST",
            "('tiny_val',)",
            "SOLVER.MAX_ITER",
            "6",
        ],
    )
    trainer = Trainer(cfg)
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


def test_bad_register_voc_names_the_fault_and_writes_nothing(tmp_path):
    voc = write_voc_dataset(tmp_path)
    voc.xml("train_001").write_text("<annotation>")
    output_dir = tmp_path / "out"
    with pytest.raises(DatasetError, match="train_001.xml is not valid XML"):
        run(["--register-voc", "voc_e2e_broken", str(voc.dirname), "train"], output_dir)
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "zoo_config, num_classes_key, own_loss",
    [
        (
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "loss_mask",
        ),
        (
            "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "loss_box_reg",
        ),
        ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "MODEL.RETINANET.NUM_CLASSES", "loss_cls"),
    ],
)
def test_detectron2_zoo_yamls_run_unchanged(
    tiny_shapes, tmp_path, zoo_config, num_classes_key, own_loss
):
    """The README's promise: Detectron2's own R-CNN and RetinaNet YAMLs train and evaluate
    through train_net.py as they are (only sizes and the dataset overridden)."""
    from detectron2 import model_zoo

    args = train_net.argument_parser().parse_args(
        [
            "--config-file",
            model_zoo.get_config_file(zoo_config),
            "MODEL.WEIGHTS",
            "",
            num_classes_key,
            "4",
            "DATASETS.TRAIN",
            "('tiny_train',)",
            "DATASETS.TEST",
            "('tiny_val',)",
            "DATALOADER.NUM_WORKERS",
            "0",
            "INPUT.MIN_SIZE_TRAIN",
            "(64,)",
            "INPUT.MAX_SIZE_TRAIN",
            "64",
            "INPUT.MIN_SIZE_TEST",
            "64",
            "INPUT.MAX_SIZE_TEST",
            "64",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "2",
            "SOLVER.BASE_LR",
            "0.001",
            "SOLVER.STEPS",
            "()",
            "SOLVER.WARMUP_ITERS",
            "0",
            "OUTPUT_DIR",
            str(tmp_path),
        ]
    )
    results = train_net.main(args)  # the tiny_shapes fixture registered the datasets
    assert (tmp_path / "model_final.pth").exists()
    assert "bbox" in results  # evaluated with COCOEvaluator
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any(
        own_loss in m for m in metrics
    )  # the model's own loss (masks: the polygons were used)


def test_num_gpus_beyond_the_gpus_found_is_refused_before_launch(monkeypatch):
    from fcos_d2.engine import check_num_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    check_num_gpus(1)  # the CPU
    with pytest.raises(
        SystemExit, match=r"--num-gpus 2, but 0 GPU\(s\) found: run with --num-gpus 1"
    ):
        check_num_gpus(2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        SystemExit, match=r"--num-gpus 4, but 1 GPU\(s\) found: use --num-gpus 1 or fewer"
    ):
        check_num_gpus(4)


def test_eval_only_with_test_time_augmentation(trained, tmp_path):
    output_dir, _ = trained
    results = run(
        [],
        tmp_path,
        "--eval-only",
        opts=[
            "MODEL.WEIGHTS",
            str(output_dir / "model_final.pth"),
            "TEST.AUG.ENABLED",
            "True",
            "TEST.AUG.MIN_SIZES",
            "(48, 64)",
            "TEST.AUG.MAX_SIZE",
            "100",
            "TEST.AUG.FLIP",
            "True",
        ],
    )
    assert "bbox" in results and "bbox_TTA" in results
    assert (tmp_path / "inference_TTA" / "tiny_val" / "coco_instances_results.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        ["MODEL.FCOS.BOX_QUALITY", "iou"],
        ["MODEL.FCOS.ASSIGNER", "atss"],
        ["MODEL.FCOS.CLS_LOSS", "quality_focal", "MODEL.FCOS.BOX_QUALITY", "none"],
        ["MODEL.FCOS.NMS_TYPE", "soft_gaussian"],
    ],
    ids=["iou-quality", "atss", "quality-focal", "soft-nms"],
)
def test_each_successor_option_trains_and_evaluates(trained, tmp_path, options):
    results = run([], tmp_path, opts=options)  # ``trained`` registered the datasets
    assert 0 <= results["bbox"]["AP50"] <= 100
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any("loss_fcos_cls" in m for m in metrics)


def test_contradictory_successor_options_stop_before_training_with_the_keys(trained, tmp_path):
    with pytest.raises(ValueError, match="CLS_LOSS quality_focal.*BOX_QUALITY ctrness"):
        run([], tmp_path, opts=["MODEL.FCOS.CLS_LOSS", "quality_focal"])
    assert not (tmp_path / "model_final.pth").exists()


VOC_OPTS = ["MODEL.FCOS.NUM_CLASSES", "20", "MODEL.FCOS.SCORE_THRESH_TEST", "0.001"]


@pytest.fixture(scope="module")
def voc_trained(tmp_path_factory):
    """The tiny VOC-format fixture, and the output dir and results of a 4-iteration run on
    its train split (--register-voc), evaluated on its val split."""
    voc = write_voc_dataset(tmp_path_factory.mktemp("voc"))
    output_dir = tmp_path_factory.mktemp("voc_train")
    args = train_net.argument_parser().parse_args(
        [
            "--register-voc",
            "voc_e2e_train",
            str(voc.dirname),
            "train",
            "--register-voc",
            "voc_e2e_val",
            str(voc.dirname),
            "val",
            "--config-file",
            str(QUICK_CONFIG),
            "OUTPUT_DIR",
            str(output_dir),
            "DATASETS.TRAIN",
            "('voc_e2e_train',)",
            "DATASETS.TEST",
            "('voc_e2e_val',)",
            *VOC_OPTS,
        ]
    )
    return voc, output_dir, train_net.main(args)


def test_voc_trains_and_is_evaluated_by_the_voc_evaluator(voc_trained):
    _, output_dir, results = voc_trained
    # PascalVOCDetectionEvaluator's keys (COCOEvaluator's would include APs, APm, APl).
    assert set(results["bbox"]) == {"AP", "AP50", "AP75"}
    # Means over the 20 classes: NaN here, where the untrained model detects classes that the
    # val split lacks (the evaluator as it is; README, "VOC evaluation").
    assert all(math.isnan(v) or 0 <= v <= 100 for v in results["bbox"].values())
    assert "Evaluating voc_e2e_val using 2012 metric" in (output_dir / "log.txt").read_text()
    assert not (output_dir / "inference" / "voc_e2e_val" / "coco_instances_results.json").exists()
    assert torch.load(output_dir / "model_final.pth", weights_only=False)["iteration"] == 3


def test_voc_classes_json_holds_the_voc_names(voc_trained):
    _, output_dir, _ = voc_trained
    assert json.loads((output_dir / "classes.json").read_text()) == {
        "names": list(VOC_CLASSES),
        "category_ids": list(range(20)),
        "dataset": "voc_e2e_train",
    }


def test_visualizer_and_demo_label_with_the_voc_names(voc_trained, tmp_path, monkeypatch):
    """From the classes.json beside the weights, or, without one, from the dataset that
    --register-voc registers for DATASETS.TEST."""
    import shutil

    import visualize_fcos

    import demo

    voc, output_dir, _ = voc_trained
    image = str(voc.dirname / "JPEGImages" / "val_000.jpg")
    drawn = []
    original_draw = visualize_fcos.draw

    def draw(image_rgb, model, per_level, detections, names, path):
        drawn.append((list(names), len(detections[0])))
        original_draw(image_rgb, model, per_level, detections, names, path)

    monkeypatch.setattr(visualize_fcos, "draw", draw)
    alone = tmp_path / "alone" / "model.pth"  # no classes.json beside it
    alone.parent.mkdir()
    shutil.copy(output_dir / "model_final.pth", alone)
    for weights, register in (
        (output_dir / "model_final.pth", []),
        (alone, ["--register-voc", "voc_e2e_vis", str(voc.dirname), "val"]),
    ):
        picture = tmp_path / f"{weights.stem}.png"
        code = visualize_fcos.main(
            ["--input", image, "--config-file", str(QUICK_CONFIG), "--output", str(picture)]
            + register
            + [*VOC_OPTS, "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"]
            + ["DATASETS.TEST", "('voc_e2e_vis',)" if register else "()"]
        )
        assert code == 0 and picture.stat().st_size > 20_000
    assert drawn == [(list(VOC_CLASSES), 5)] * 2

    code = demo.main(
        ["--config-file", str(QUICK_CONFIG), "--input", image, "--output", str(tmp_path / "demo")]
        + ["--confidence-threshold", "0", *VOC_OPTS, "MODEL.DEVICE", "cpu"]
        + ["MODEL.WEIGHTS", str(output_dir / "model_final.pth")]
    )
    detections = json.loads((tmp_path / "demo" / "detections.json").read_text())[image]
    assert code == 0 and detections
    assert {d["class_name"] for d in detections} <= set(VOC_CLASSES)
    assert all(d["class_name"] == VOC_CLASSES[d["class_id"]] for d in detections)
