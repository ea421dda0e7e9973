"""demo.py: annotated images and JSON; unreadable images are skipped by name."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import QUICK_CONFIG

import demo


@pytest.mark.slow
def test_demo_writes_images_and_json_and_skips_unreadable(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "good.png"), np.full((48, 64, 3), 120, np.uint8))
    (inputs / "corrupt.jpg").write_bytes(b"not an image")
    single = tmp_path / "single.png"
    cv2.imwrite(str(single), np.full((40, 40, 3), 30, np.uint8))
    output = tmp_path / "out"

    code = demo.main(
        [
            "--config-file",
            str(QUICK_CONFIG),
            "--input",
            str(inputs),
            str(single),
            "--output",
            str(output),
            "--confidence-threshold",
            "0.0",
            "MODEL.FCOS.SCORE_THRESH_TEST",
            "0.0",
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    assert code == 0
    assert (output / "good.png.png").exists() and (output / "single.png.png").exists()
    assert not (output / "corrupt.jpg.png").exists()
    detections = json.loads((output / "detections.json").read_text())
    assert set(detections) == {str(inputs / "good.png"), str(single)}
    first = detections[str(single)][0]
    assert set(first) == {"bbox", "score", "class_id", "category_id", "class_name"}
    assert first["class_name"] in {"circle", "square", "triangle", "star"}
    assert "skipped (unreadable): " + str(inputs / "corrupt.jpg") in capsys.readouterr().out


@pytest.mark.slow
def test_demo_keeps_extensions_and_reports_or_walks_subdirectories(tmp_path, caplog):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    for name in ("a.png", "a.jpg", "sub/b.png"):
        cv2.imwrite(str(inputs / name), np.full((32, 32, 3), 90, np.uint8))
    demo.logger.addHandler(caplog.handler)  # the fcos_d2 logger may not propagate (setup_logger)
    try:
        flat = demo.expand_inputs([str(inputs)])
    finally:
        demo.logger.removeHandler(caplog.handler)
    assert [(p.name, out) for p, out in flat] == [("a.jpg", "a.jpg.png"), ("a.png", "a.png.png")]
    assert "1 subdirectories not read (sub); --recursive reads them" in caplog.text
    walked = demo.expand_inputs([str(inputs)], recursive=True)
    assert [out for _, out in walked] == ["a.jpg.png", "a.png.png", "sub/b.png.png"]
    # The same name from two directories given apart: the second gets a suffix.
    again = demo.expand_inputs(
        [str(inputs / "a.png"), str(inputs / "sub" / "b.png"), str(inputs / "sub" / "b.png")]
    )
    assert [out for _, out in again] == ["a.png.png", "b.png.png", "b.png-1.png"]

    output = tmp_path / "out"
    code = demo.main(
        [
            "--config-file",
            str(QUICK_CONFIG),
            "--input",
            str(inputs),
            "--recursive",
            "--output",
            str(output),
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    assert code == 0
    assert {p.relative_to(output).as_posix() for p in output.rglob("*.png")} == {
        "a.jpg.png",
        "a.png.png",
        "sub/b.png.png",
    }


@pytest.mark.slow
def test_demo_names_classes_and_ids_as_the_training_set(tmp_path):
    """Trained on a COCO file with category ids 7 and 42: demo.py labels detections with
    that file's names and ids (not the built-in dataset's), from OUTPUT_DIR/classes.json."""
    import train_net
    from fcos_d2.data.datasets import generate_shapes_split

    json_path = generate_shapes_split(str(tmp_path / "data"), "own", 6, 64, seed=5, progress=False)
    content = json.loads(open(json_path).read())
    content["categories"] = [{"id": 7, "name": "round"}, {"id": 42, "name": "pointy"}]
    for annotation in content["annotations"]:
        annotation["category_id"] = 7 if annotation["category_id"] in (1, 2) else 42
    own = tmp_path / "own.json"
    own.write_text(json.dumps(content))
    image_root = str(tmp_path / "data" / "own")
    output_dir = tmp_path / "train"
    args = train_net.argument_parser().parse_args(
        [
            "--register-coco",
            "demo_own_train",
            str(own),
            image_root,
            "--config-file",
            str(QUICK_CONFIG),
            "MODEL.FCOS.NUM_CLASSES",
            "2",
            "DATASETS.TRAIN",
            "('demo_own_train',)",
            "DATASETS.TEST",
            "()",
            "SOLVER.MAX_ITER",
            "2",
            "OUTPUT_DIR",
            str(output_dir),
        ]
    )
    train_net.main(args)
    recorded = json.loads((output_dir / "classes.json").read_text())
    assert recorded == {
        "names": ["round", "pointy"],
        "category_ids": [7, 42],
        "dataset": "demo_own_train",
    }

    output = tmp_path / "out"
    code = demo.main(
        [
            "--config-file",
            str(QUICK_CONFIG),
            "--input",
            str(Path(image_root) / "000001.png"),
            "--output",
            str(output),
            "--confidence-threshold",
            "0.0",
            "MODEL.FCOS.NUM_CLASSES",
            "2",
            "MODEL.FCOS.SCORE_THRESH_TEST",
            "0.0",
            "MODEL.WEIGHTS",
            str(output_dir / "model_final.pth"),
        ]
    )
    assert code == 0
    detections = next(iter(json.loads((output / "detections.json").read_text()).values()))
    assert detections
    assert {(d["class_id"], d["category_id"], d["class_name"]) for d in detections} <= {
        (0, 7, "round"),
        (1, 42, "pointy"),
    }


def test_only_the_best_detection_of_an_object_is_drawn():
    import torch
    from detectron2.structures import Boxes, Instances

    instances = Instances((100, 100))
    instances.pred_boxes = Boxes(
        torch.tensor([[10.0, 10, 50, 50], [11, 10, 50, 51], [60, 60, 90, 90]])
    )
    instances.scores = torch.tensor([0.31, 0.75, 0.5])
    instances.pred_classes = torch.tensor([1, 0, 2])  # a wrong-class duplicate on the first object
    drawn = demo.best_per_object(instances)
    assert drawn.scores.tolist() == [0.75, 0.5] and drawn.pred_classes.tolist() == [0, 2]
