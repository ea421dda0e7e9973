"""tools/visualize_fcos.py: every explained detection is traced to the location that made it."""

import cv2
import numpy as np
import pytest
import torch
import visualize_fcos  # tools/, on sys.path through conftest
from conftest import QUICK_CONFIG, load_config
from detectron2.modeling import build_model

from fcos_d2.modeling.postprocess import detect_single_image

OPTS = ["MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]


def test_each_detection_is_traced_back_to_its_location():
    model = build_model(load_config(QUICK_CONFIG, OPTS)).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        model.head.box_pred.weight.normal_(std=0.05)
        per_level = visualize_fcos.level_maps(model, torch.rand(3, 64, 96) * 255)
        boxes, scores, classes = detect_single_image(
            [x[0] for x in per_level],
            [x[1] for x in per_level],
            [x[2] for x in per_level],
            [x[3] for x in per_level],
            model.strides,
            (64, 96),
            **model.postprocess_arguments(),
        )
        boxes, scores, classes = boxes[:5], scores[:5], classes[:5]
        origins = visualize_fcos.locate_detections(
            model, per_level, boxes, scores, classes, (64, 96)
        )
    assert len(origins) == 5 and all(o is not None for o in origins)
    for box, (level, (px, py), (left, top, right, bottom)) in zip(boxes.tolist(), origins):
        rebuilt = [max(px - left, 0), max(py - top, 0), min(px + right, 96), min(py + bottom, 64)]
        np.testing.assert_allclose(rebuilt, box, atol=1e-3)
        assert 0 <= level < len(model.strides)


@pytest.mark.slow
def test_tool_writes_the_picture(tmp_path):
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8))
    output = tmp_path / "view.png"
    code = visualize_fcos.main(
        [
            "--input",
            str(image),
            "--config-file",
            str(QUICK_CONFIG),
            "--output",
            str(output),
            *OPTS,
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    assert code == 0 and output.stat().st_size > 20_000
