"""FCOS inference exported with torch.export and to ONNX gives the eager model's detections.

The model is the quick R-18 config with frozen BatchNorm, so that both speed-ups
(MODEL.FCOS.CHANNELS_LAST and FOLD_FROZEN_BN, on by default) are in what is exported; its
frozen statistics are random and its classifier lets detections through the 0.2
threshold. The image is 120 x 160, padded to 128 x 160 by the model.

Naming: D detections of one image.
"""

import importlib
import importlib.util
from typing import Tuple

import pytest
import torch
from conftest import QUICK_CONFIG, REPO, load_config, randomize_frozen_bn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from torch import Tensor

from fcos_d2.export import (
    FCOSExportModule,
    compare_detections,
    export_program,
    instances_to_tensors,
    sample_image,
)
from fcos_d2.modeling.speedups import FrozenBNFoldedConv2d

pytestmark = [
    pytest.mark.slow,  # end to end: run by `make test`, not by `-m "not slow"`
    # torchvision's fake nms and torch.export.save; nothing this project can act on.
    pytest.mark.filterwarnings("ignore:`create_unbacked_symint` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:No complete tensor found in the group:UserWarning"),
]

OPTS = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FCOS.SCORE_THRESH_TEST", "0.2"]
IMAGE_SIZE = (120, 160)
MIN_DETECTIONS = 10


def _load_tool():
    """tools/export.py as a module (a site package already owns ``tools``)."""
    spec = importlib.util.spec_from_file_location("export_tool", REPO / "tools" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_onnx():
    """onnx, onnxscript and onnxruntime, or a failure that says how to get them."""
    try:
        return [importlib.import_module(name) for name in ("onnx", "onnxscript", "onnxruntime")]
    except ImportError as e:
        pytest.fail(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e}); they are in the "
            "'test' extra: pip install -e '.[test]'",
            pytrace=False,
        )


def build_randomized_model(opts=()):
    """The quick model with random frozen BN statistics and a classifier that fires."""
    torch.manual_seed(0)
    model = build_model(load_config(QUICK_CONFIG, [*OPTS, *opts]))
    randomize_frozen_bn(model)
    with torch.no_grad():
        head = model.head
        head.cls_logits.weight.normal_(std=0.2)
        head.cls_logits.bias.fill_(-1.0)
        head.centerness.weight.normal_(std=0.2)
        head.box_pred.weight.normal_(std=0.2)
    return model.eval()


def eager_detections(model, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        return instances_to_tensors(model([{"image": image}])[0]["instances"])


def assert_agree(expected, actual, what: str) -> None:
    difference = compare_detections(expected, actual)
    assert difference.agrees(), f"{what}: {difference}"


@pytest.fixture(scope="module")
def model():
    return build_randomized_model()


@pytest.fixture(scope="module")
def image():
    return sample_image(*IMAGE_SIZE)


@pytest.fixture(scope="module")
def eager(model, image):
    detections = eager_detections(model, image)
    assert len(detections[1]) >= MIN_DETECTIONS, "too few detections to compare"
    assert len(detections[2].unique()) > 1, "detections of a single class"
    return detections


@pytest.fixture(scope="module")
def wrapper(model):
    return FCOSExportModule(model).eval()


@pytest.fixture(scope="module")
def wrapper_detections(wrapper, image):
    with torch.no_grad():
        return wrapper(image)


def test_exported_model_has_the_speedups(model):
    assert model.channels_last
    assert any(isinstance(m, FrozenBNFoldedConv2d) for m in model.modules())


def test_wrapper_matches_the_eager_model(eager, wrapper_detections):
    assert_agree(eager, wrapper_detections, "wrapper vs eager model")
    boxes, scores, classes = wrapper_detections
    assert boxes.shape == (len(scores), 4) and classes.dtype == torch.int64


def test_torch_export_round_trip(eager, wrapper, wrapper_detections, image):
    program = export_program(wrapper, image)
    with torch.no_grad():
        exported = program.module()(image)
    assert_agree(eager, exported, "torch.export vs eager model")
    assert_agree(wrapper_detections, exported, "torch.export vs wrapper")


def test_torch_export_with_dynamic_size():
    # Plain BatchNorm (the quick config's) on channels-last tensors: a guard on the
    # symbolic sizes that only export_program's run-time asserts get past.
    model = build_randomized_model(["MODEL.RESNETS.NORM", "BN"])
    program = export_program(FCOSExportModule(model), sample_image(*IMAGE_SIZE), dynamic=True)
    for size in [IMAGE_SIZE, (72, 100)]:
        x = sample_image(*size, seed=1)
        with torch.no_grad():
            exported = program.module()(x)
        expected = eager_detections(model, x)
        assert len(expected[1]) >= MIN_DETECTIONS
        assert_agree(expected, exported, f"dynamic torch.export at {size}")


def test_torch_export_runs_when_nothing_is_detected(image):
    # torchvision's fake nms claims >= 2 kept boxes; the exported program asserts it.
    model = build_randomized_model(["MODEL.FCOS.SCORE_THRESH_TEST", "1.0"])
    program = export_program(FCOSExportModule(model), image)
    with torch.no_grad():
        boxes, scores, classes = program.module()(image)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,)
    assert len(eager_detections(model, image)[1]) == 0


def test_onnx_round_trip(eager, wrapper, wrapper_detections, image, tmp_path):
    onnx, _, onnxruntime = require_onnx()
    path = tmp_path / "fcos.onnx"
    torch.onnx.export(
        wrapper,
        (image,),
        path,
        dynamo=True,
        input_names=["image"],
        output_names=["boxes", "scores", "classes"],
        verbose=False,
    )
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    exported = session.run(["boxes", "scores", "classes"], {"image": image.numpy()})
    assert_agree(eager, exported, "ONNX (onnxruntime) vs eager model")
    assert_agree(wrapper_detections, exported, "ONNX (onnxruntime) vs wrapper")


def test_tool_exports_a_checkpoint_and_checks_it(model, tmp_path, capsys):
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    output = tmp_path / "fcos.pt2"
    code = _load_tool().main(
        [
            "--config-file",
            str(QUICK_CONFIG),
            "--format",
            "torch.export",
            "--output",
            str(output),
            "--height",
            "64",
            "--width",
            "96",
            *OPTS,
            "MODEL.WEIGHTS",
            str(tmp_path / "model.pth"),
            "MODEL.DEVICE",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert output.is_file() and "[ok]" in out and "MISMATCH" not in out
    assert "px high and wide" in out and "(64, 96) image" in out  # dynamic by default


def test_tool_stores_the_contract_and_the_training_classes(model, tmp_path, capsys):
    """Dynamic sizes by default; the file carries the input/output contract and the class
    names and category ids of the classes.json beside the checkpoint (ONNX and .pt2)."""
    import json

    import onnx

    from fcos_d2.classes import ModelClasses, write_classes

    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    write_classes(str(tmp_path), ModelClasses(["a", "b", "c", "d"], [7, 42, 3, 9], "own_train"))
    common = [*OPTS, "MODEL.WEIGHTS", str(tmp_path / "model.pth"), "MODEL.DEVICE", "cpu"]
    onnx_path, pt2_path = tmp_path / "fcos.onnx", tmp_path / "fcos.pt2"
    for fmt, path in (("onnx", onnx_path), ("torch.export", pt2_path)):
        code = _load_tool().main(
            [
                "--config-file",
                str(QUICK_CONFIG),
                "--format",
                fmt,
                "--output",
                str(path),
                "--height",
                "64",
                "--width",
                "96",
                *common,
            ]
        )
        out = capsys.readouterr().out
        assert code == 0 and "[ok]" in out and "MISMATCH" not in out, out
        assert "-4096 px high and wide" in out  # dynamic by default: checked at a second size too
    stored = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}["fcos_d2"]
    extra = {"fcos_d2.json": ""}
    torch.export.load(str(pt2_path), extra_files=extra)
    for contract in (json.loads(stored), json.loads(extra["fcos_d2.json"])):
        assert contract["class_names"] == ["a", "b", "c", "d"] and contract["category_ids"] == [
            7,
            42,
            3,
            9,
        ]
        assert contract["input"]["channel_order"] == "BGR" and contract["input"][
            "range"
        ].startswith("0-255")
        assert set(contract["outputs"]) == {"boxes", "scores", "classes"}


def test_tool_errors_name_the_file_at_fault(tmp_path, capsys):
    tool = _load_tool()
    missing_config = tmp_path / "nope.yaml"
    assert (
        tool.main(
            [
                "--config-file",
                str(missing_config),
                "--format",
                "onnx",
                "--output",
                str(tmp_path / "a.onnx"),
            ]
        )
        == 2
    )
    assert str(missing_config) in capsys.readouterr().err
    missing_weights = tmp_path / "nope.pth"
    assert (
        tool.main(
            [
                "--config-file",
                str(QUICK_CONFIG),
                "--format",
                "torch.export",
                "--output",
                str(tmp_path / "a.pt2"),
                "MODEL.WEIGHTS",
                str(missing_weights),
                "MODEL.DEVICE",
                "cpu",
            ]
        )
        == 2
    )
    assert str(missing_weights) in capsys.readouterr().err


def test_tool_refuses_a_bad_register_voc_naming_it(tmp_path, capsys):
    nowhere = tmp_path / "VOCnowhere"
    code = _load_tool().main(
        ["--config-file", str(QUICK_CONFIG), "--format", "torch.export"]
        + ["--output", str(tmp_path / "a.pt2"), "--register-voc", "voc_export_bad"]
        + [str(nowhere), "train", "MODEL.DEVICE", "cpu"]
    )
    assert code == 2
    assert f"Pascal VOC directory not found: {nowhere}" in capsys.readouterr().err
    assert not (tmp_path / "a.pt2").exists()


def test_near_tied_scores_that_rounding_swaps_still_agree():
    """Two detections of one class 1e-6 apart in score, far apart in box: a kernel whose
    rounding puts them the other way round agrees (the failure seen on an AMD EPYC's
    onnxruntime: 113 px "apart"); each detection still needs its own partner, and a
    near-tie of another class, or one past the score tolerance, is not paired."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 80.0, 90.0], [5.0, 5.0, 9.0, 9.0]])
    classes = torch.tensor([1, 1, 2])
    expected = (boxes, torch.tensor([0.700001, 0.700000, 0.3]), classes)
    rounded_otherwise = (boxes, torch.tensor([0.700000, 0.700001, 0.3]), classes)
    assert compare_detections(expected, rounded_otherwise).agrees()
    one_box_twice = (boxes[[0, 0, 2]], expected[1], classes)
    assert not compare_detections(expected, one_box_twice).agrees()
    other_class = (boxes, rounded_otherwise[1], torch.tensor([1, 3, 2]))
    assert not compare_detections(expected, other_class).agrees()
    apart = (boxes, torch.tensor([0.7, 0.7003, 0.3]), classes)  # 3x the score tolerance
    assert not compare_detections(expected, apart).agrees()


def test_comparison_of_detections_can_fail(eager):
    """Negative controls for ``compare_detections().agrees()``, on the eager detections: a box
    moved past the tolerance, a class swapped, an extra detection each make it fail."""
    boxes, scores, classes = (x.clone() for x in eager)
    assert compare_detections(eager, (boxes, scores, classes)).agrees()
    shifted = boxes.clone()
    shifted[3, 0] += 0.05  # 5x the box tolerance
    assert not compare_detections(eager, (shifted, scores, classes)).agrees()
    swapped = classes.clone()
    swapped[0] += 1  # another class
    assert not compare_detections(eager, (boxes, scores, swapped)).agrees()
    extra = (
        torch.cat([boxes, boxes[:1] + 1]),
        torch.cat([scores, scores[:1] * 0.5]),
        torch.cat([classes, classes[:1]]),
    )
    assert not compare_detections(eager, extra).agrees()
    rescored = scores.clone()
    rescored[5] += 1e-3  # 10x the score tolerance
    assert not compare_detections(eager, (boxes, rescored, classes)).agrees()
    empty = (boxes[:0], scores[:0], classes[:0])
    assert (
        compare_detections(empty, empty).agrees() and not compare_detections(eager, empty).agrees()
    )
