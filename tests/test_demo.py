"""demo.py: annotated images and JSON; unreadable images are skipped by name."""

import json

import cv2
import numpy as np

import demo

from conftest import QUICK_CONFIG


def test_demo_writes_images_and_json_and_skips_unreadable(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "good.png"), np.full((48, 64, 3), 120, np.uint8))
    (inputs / "corrupt.jpg").write_bytes(b"not an image")
    single = tmp_path / "single.png"
    cv2.imwrite(str(single), np.full((40, 40, 3), 30, np.uint8))
    output = tmp_path / "out"

    code = demo.main(
        ["--config-file", str(QUICK_CONFIG), "--input", str(inputs), str(single),
         "--output", str(output), "--confidence-threshold", "0.0",
         "MODEL.FCOS.SCORE_THRESH_TEST", "0.0", "MODEL.DEVICE", "cpu"]
    )
    assert code == 0
    assert (output / "good.png").exists() and (output / "single.png").exists()
    assert not (output / "corrupt.png").exists()
    detections = json.loads((output / "detections.json").read_text())
    assert set(detections) == {str(inputs / "good.png"), str(single)}
    first = detections[str(single)][0]
    assert set(first) == {"bbox", "score", "class_id", "class_name"}
    assert first["class_name"] in {"circle", "square", "triangle", "star"}
    assert "skipped (unreadable): " + str(inputs / "corrupt.jpg") in capsys.readouterr().out
