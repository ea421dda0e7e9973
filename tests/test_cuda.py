"""fcos_d2 on a GPU: forward/backward, CUDA inference against the CPU, mixed-precision
training, and Detectron2's ``launch`` with one CUDA process.

Marked ``cuda`` and left out of ``make test`` (``conftest.py``); ``tools/gpu_check.sh``
runs them on a GPU, and its ``--dry-run`` on the CPU (``FCOS_D2_CHECK_DEVICE=cpu``), so
that a machine without a GPU still proves every step runs.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import QUICK_CONFIG, REPO, load_config
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from fcos_d2.config import setup_cfg
from fcos_d2.data.datasets import generate_shapes_split
from fcos_d2.engine import Trainer
from fcos_d2.export import compare_detections, instances_to_tensors
from fcos_d2.modeling.postprocess import decode_candidates

pytestmark = pytest.mark.cuda

# The device under test: the GPU, or the CPU in tools/gpu_check.sh --dry-run. Without either,
# every test here fails at its first use of DEVICE (left out unless -m names `cuda`: conftest.py).
DEVICE = "cuda" if torch.cuda.is_available() else os.environ.get("FCOS_D2_CHECK_DEVICE")


@pytest.fixture(autouse=True)
def _device_present():
    if DEVICE is None:
        pytest.fail(
            "no GPU found: these tests need one (FCOS_D2_CHECK_DEVICE=cpu runs them on the CPU)"
        )


# CUDA against CPU, float32 with TF32 off: per-location head outputs and candidate boxes.
SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE = 1e-2  # pixels


def batch(device, num_images=2, size=64):
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(num_images):
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]))
        instances.gt_classes = torch.tensor([0, 2])
        image = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
        inputs.append({"image": image, "instances": instances, "height": size, "width": size})
    return inputs


def test_forward_and_backward_on_the_device():
    cfg = load_config(QUICK_CONFIG, ["MODEL.DEVICE", DEVICE])
    model = build_model(cfg)
    model.train()
    losses = model(batch(DEVICE))
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    head_grad = model.head.cls_logits.weight.grad
    assert head_grad is not None and head_grad.device.type == DEVICE
    assert torch.isfinite(head_grad).all() and head_grad.abs().sum() > 0


@torch.no_grad()
def test_inference_on_the_device_equals_the_cpu():
    """Same weights, same image: head outputs and candidates within the stated tolerances,
    and the final detections agree (sorted by score)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    opts = ["MODEL.FCOS.SCORE_THRESH_TEST", "0.0", "MODEL.FCOS.PRIOR_PROB", "0.2"]
    cpu_model = build_model(load_config(QUICK_CONFIG, [*opts, "MODEL.DEVICE", "cpu"])).eval()
    device_model = build_model(load_config(QUICK_CONFIG, [*opts, "MODEL.DEVICE", DEVICE])).eval()
    for layer in (cpu_model.head.cls_logits, cpu_model.head.box_pred, cpu_model.head.centerness):
        layer.weight.normal_(0, 0.05)  # scores and boxes far from the initialisation's ties
    device_model.load_state_dict(cpu_model.state_dict())
    image = [{"image": batch("cpu", 1, 96)[0]["image"]}]

    outputs = {}
    for name, model in (("cpu", cpu_model), ("device", device_model)):
        images = model.preprocess_image(image)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        logits, box_dists, centerness = model.flatten_predictions(model.head(features))
        grid = model.location_grid(features)
        candidates = decode_candidates(
            [x[0] for x in logits],
            [x[0] for x in box_dists],
            [x[0, :, 0] for x in centerness],
            grid.points.split(grid.num_per_level),
            model.strides,
            score_thresh=0.0,
        )
        outputs[name] = (
            [x.cpu() for x in candidates],
            instances_to_tensors(model(image)[0]["instances"]),
        )

    (cpu_boxes, cpu_scores, _), cpu_detections = outputs["cpu"]
    (dev_boxes, dev_scores, _), dev_detections = outputs["device"]
    assert len(cpu_scores) > 100
    torch.testing.assert_close(dev_scores, cpu_scores, atol=SCORE_TOLERANCE, rtol=0)
    torch.testing.assert_close(dev_boxes, cpu_boxes, atol=BOX_TOLERANCE, rtol=0)
    difference = compare_detections(cpu_detections, dev_detections)
    assert difference.expected_count > 10 and difference.agrees(SCORE_TOLERANCE, BOX_TOLERANCE), (
        difference
    )


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    json_path = generate_shapes_split(str(root), "train", 16, 64, seed=7, progress=False)
    return json_path, str(root / "train")


def test_mixed_precision_training_steps(tiny_shapes, tmp_path):
    """20 iterations with SOLVER.AMP.ENABLED: finite losses, and the GradScaler does not
    skip every step (on the CPU the config falls back to float32, which is checked)."""
    from fcos_d2.data.coco_dataset import register_coco_dataset

    if "cuda_check_train" not in DatasetCatalog.list():
        register_coco_dataset("cuda_check_train", *tiny_shapes)
    cfg = setup_cfg(
        str(QUICK_CONFIG),
        [
            "MODEL.DEVICE",
            DEVICE,
            "SOLVER.AMP.ENABLED",
            "True",
            "SOLVER.MAX_ITER",
            "20",
            "SOLVER.CHECKPOINT_PERIOD",
            "1000",
            "DATASETS.TRAIN",
            "('cuda_check_train',)",
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
    )
    assert cfg.SOLVER.AMP.ENABLED == (DEVICE == "cuda")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    scales = []
    if cfg.SOLVER.AMP.ENABLED:
        from detectron2.engine import HookBase

        class RecordScale(HookBase):
            def after_step(self):
                scales.append(float(self.trainer._trainer.grad_scaler.get_scale()))

        trainer.register_hooks([RecordScale()])
    trainer.train()
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses and all(map(lambda x: x == x and abs(x) != float("inf"), losses))
    if cfg.SOLVER.AMP.ENABLED:
        halvings = sum(later < earlier for earlier, later in zip(scales, scales[1:]))
        assert len(scales) == 20 and halvings < 19, scales


def test_launch_one_process_end_to_end(tiny_shapes, tmp_path):
    """train_net.py --num-gpus 1 (Detectron2's launch) trains, checkpoints and evaluates."""
    json_path, image_root = tiny_shapes
    command = [
        sys.executable,
        str(REPO / "train_net.py"),
        "--num-gpus",
        "1",
        "--register-coco",
        "tiny_train",
        json_path,
        image_root,
        "--register-coco",
        "tiny_val",
        json_path,
        image_root,
        "--config-file",
        str(QUICK_CONFIG),
        "MODEL.DEVICE",
        DEVICE,
        "SOLVER.MAX_ITER",
        "4",
        "DATASETS.TRAIN",
        "('tiny_train',)",
        "DATASETS.TEST",
        "('tiny_val',)",
        "MODEL.FCOS.SCORE_THRESH_TEST",
        "0.001",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    assert "Evaluation results for bbox" in completed.stdout + completed.stderr
