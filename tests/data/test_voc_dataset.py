"""--register-voc (fcos_d2.data.voc_dataset): a good VOC directory registers and loads as
its XML says; each fault is an error naming the file and the fault, and nothing is
registered; Trainer evaluates a VOC set with Detectron2's VOC evaluator."""

import argparse
import re
import shutil

import pytest
import torch
from conftest import load_config
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances
from voc_fixture import VOCObject, annotation_xml, write_voc_dataset

from fcos_d2.data.coco_dataset import DatasetError
from fcos_d2.data.voc_dataset import (
    VOC_CLASSES,
    add_register_voc_argument,
    register_voc_dataset,
    register_voc_datasets,
    voc_year,
)
from fcos_d2.engine import Trainer


@pytest.fixture
def voc(tmp_path):
    return write_voc_dataset(tmp_path)


def test_a_good_directory_registers_and_loads_as_its_xml_says(voc):
    register_voc_dataset("voc_test_good", str(voc.dirname), "train")
    metadata = MetadataCatalog.get("voc_test_good")
    assert metadata.thing_classes == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert (metadata.evaluator_type, metadata.year, metadata.split) == ("pascal_voc", 2012, "train")
    records = DatasetCatalog.get("voc_test_good")
    assert [r["image_id"] for r in records] == voc.splits["train"]
    for record in records:
        assert (record["height"], record["width"]) == (64, 64)
        assert record["file_name"].endswith(f"JPEGImages/{record['image_id']}.jpg")
        objects = voc.objects[record["image_id"]]
        # Detectron2 makes VOC's 1-based xmin, ymin 0-based; xmax, ymax stay.
        assert [a["bbox"] for a in record["annotations"]] == [
            [o.box[0] - 1, o.box[1] - 1, o.box[2], o.box[3]] for o in objects
        ]
        assert [a["category_id"] for a in record["annotations"]] == [
            VOC_CLASSES.index(o.name) for o in objects
        ]
    assert records[0]["annotations"][0]["bbox"] == [0, 0, 32, 64]  # touches the borders


def test_year_is_2007_only_when_the_directory_name_says_so(tmp_path):
    assert voc_year("datasets/VOCdevkit/VOC2007") == 2007
    assert voc_year("datasets/VOCdevkit/VOC2007/") == 2007
    assert voc_year("datasets/VOC2007/VOC2012") == 2012
    assert voc_year("my_boxes") == 2012
    voc = write_voc_dataset(tmp_path, name="VOC2007")
    register_voc_dataset("voc_test_2007", str(voc.dirname), "val")
    assert MetadataCatalog.get("voc_test_2007").year == 2007


def _rewrite(voc, image_id, objects=None, edit=lambda text: text):
    """Rewrite ``image_id``'s XML with ``objects`` (default: as written), then ``edit`` it."""
    objects = voc.objects[image_id] if objects is None else objects
    voc.xml(image_id).write_text(edit(annotation_xml(image_id, 64, 64, objects)))
    return voc.xml(image_id)


def _with_box(voc, image_id, box):
    first = voc.objects[image_id][0]
    return _rewrite(voc, image_id, [VOCObject(first.name, box)] + voc.objects[image_id][1:])


def _split_file(voc, text):
    path = voc.dirname / "ImageSets" / "Main" / "train.txt"
    path.write_text(text)
    return path


# Each fault: (change the fixture, returning the path the message must name), message.
FAULTS = {
    "no directory": (lambda voc: voc.dirname / "nowhere", "Pascal VOC directory not found"),
    "no JPEGImages": (
        lambda voc: shutil.rmtree(voc.dirname / "JPEGImages") or voc.dirname,
        "has no JPEGImages/",
    ),
    "no Annotations": (
        lambda voc: shutil.rmtree(voc.dirname / "Annotations") or voc.dirname,
        "has no Annotations/",
    ),
    "no split file": (
        lambda voc: _split_file(voc, "").unlink() or voc.dirname / "ImageSets/Main/train.txt",
        "split file not found",
    ),
    "empty split": (lambda voc: _split_file(voc, "\n\n"), "is empty: it lists no image ids"),
    "one id": (lambda voc: _split_file(voc, "train_000\n"), "lists one image id"),
    "two words a line": (
        lambda voc: _split_file(voc, "train_000\ntrain_001 1\n"),
        "line 2 holds 2 words; expected one image id per line",
    ),
    "no xml": (
        lambda voc: voc.xml("train_002").unlink() or voc.dirname / "Annotations",
        r"1 id\(s\) without .*/Annotations/ID.xml: train_002$",
    ),
    "no jpg": (
        lambda voc: (
            (voc.dirname / "JPEGImages/train_003.jpg").unlink() or voc.dirname / "JPEGImages"
        ),
        r"1 id\(s\) without .*/JPEGImages/ID.jpg: train_003$",
    ),
    "bad xml": (
        lambda voc: _rewrite(voc, "train_001", edit=lambda text: text[:-20]),
        "is not valid XML",
    ),
    "xmin 0": (lambda voc: _with_box(voc, "train_001", (0, 5, 20, 20)), "outside the 64x64"),
    "ymin 0": (lambda voc: _with_box(voc, "train_001", (5, 0, 20, 20)), "outside the 64x64"),
    "xmax past width": (
        lambda voc: _with_box(voc, "train_001", (5, 5, 65, 20)),
        r"<object> #1 \('\w+'\): box \(xmin 5, ymin 5, xmax 65, ymax 20\) outside the 64x64",
    ),
    "ymax past height": (
        lambda voc: _with_box(voc, "train_001", (5, 5, 20, 65)),
        "outside the 64x64",
    ),
    "xmax before xmin": (
        lambda voc: _with_box(voc, "train_001", (30, 5, 20, 20)),
        r"<object> #1 \('\w+'\): degenerate box \(xmin 30, ymin 5, xmax 20, ymax 20\)",
    ),
    "ymax before ymin": (
        lambda voc: _with_box(voc, "train_001", (5, 30, 20, 20)),
        "degenerate box",
    ),
    "fractional box": (
        lambda voc: _rewrite(
            voc,
            "train_001",
            edit=lambda text: re.sub(r"<xmin>\d+</xmin>", "<xmin>12.5</xmin>", text, count=1),
        ),
        r"<object> #1 .* <bndbox>: <xmin> is '12.5', not an integer",
    ),
    "no difficult": (
        lambda voc: _rewrite(
            voc, "train_001", edit=lambda text: text.replace("<difficult>0</difficult>", "", 1)
        ),
        r"<object> #1 \('\w+'\) lacks <difficult>",
    ),
    "difficult 2": (
        lambda voc: _rewrite(
            voc,
            "train_001",
            edit=lambda text: text.replace("<difficult>0<", "<difficult>2<", 1),
        ),
        "<difficult> is 2; expected 0 or 1",
    ),
    "no size": (
        lambda voc: _rewrite(
            voc, "train_001", edit=lambda text: text.replace("<width>64</width>", "")
        ),
        "lacks <size/width>",
    ),
    "no name": (
        lambda voc: _rewrite(
            voc, "train_001", edit=lambda text: re.sub(r"<name>\w+", "<name>", text)
        ),
        "<object> #1 lacks <name>",
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_is_named_and_nothing_is_registered(voc, fault):
    change, message = FAULTS[fault]
    named = change(voc)
    dirname = named if fault == "no directory" else voc.dirname
    name = "voc_test_fault_" + re.sub(r"\W", "_", fault)
    with pytest.raises(DatasetError, match=message) as error:
        register_voc_dataset(name, str(dirname), "train")
    assert str(named) in str(error.value)
    assert name not in DatasetCatalog.list()


def test_every_unknown_class_is_listed_with_its_count_and_first_file(voc):
    _rewrite(voc, "train_001", [VOCObject("unicorn", o.box) for o in voc.objects["train_001"]])
    _rewrite(voc, "train_002", [VOCObject("Dog", (2, 2, 9, 9))] + voc.objects["train_002"][1:])
    _rewrite(voc, "train_004", [VOCObject("unicorn", (2, 2, 9, 9))])
    with pytest.raises(DatasetError) as error:
        register_voc_dataset("voc_test_unknown", str(voc.dirname), "train")
    message = str(error.value)
    unicorns = len(voc.objects["train_001"]) + 1
    assert "2 class name(s) not in the 20 classes (aeroplane, bicycle," in message
    assert f"'Dog' (1 object(s), first in {voc.xml('train_002')})" in message
    assert f"'unicorn' ({unicorns} object(s), first in {voc.xml('train_001')})" in message
    assert "voc_test_unknown" not in DatasetCatalog.list()


def test_one_bad_spec_registers_none(voc, tmp_path):
    bad = write_voc_dataset(tmp_path / "other")
    voc.xml("val_000").unlink()
    with pytest.raises(DatasetError, match="val_000"):
        register_voc_datasets(
            [
                ("voc_test_pair_train", str(bad.dirname), "train"),
                ("voc_test_pair_val", str(voc.dirname), "val"),
            ]
        )
    assert not {"voc_test_pair_train", "voc_test_pair_val"} & set(DatasetCatalog.list())


def test_a_taken_name_is_refused(voc):
    register_voc_dataset("voc_test_taken", str(voc.dirname), "train")
    with pytest.raises(DatasetError, match="'voc_test_taken' is already registered"):
        register_voc_dataset("voc_test_taken", str(voc.dirname), "val")
    with pytest.raises(DatasetError, match="given to --register-voc twice"):
        register_voc_datasets([("voc_test_twice", str(voc.dirname), "train")] * 2)


def test_the_argument_is_repeatable_triples():
    parser = argparse.ArgumentParser()
    add_register_voc_argument(parser)
    args = parser.parse_args(
        ["--register-voc", "a", "d1", "train", "--register-voc", "b", "d2", "val"]
    )
    assert args.register_voc == [["a", "d1", "train"], ["b", "d2", "val"]]
    assert parser.parse_args([]).register_voc == []


def _detections(boxes, classes, scores, size=64):
    instances = Instances((size, size))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    return {"instances": instances}


def test_trainer_evaluates_a_voc_set_as_voc_does(voc):
    """Trainer.build_evaluator gives the VOC evaluator; the ground truth given back as
    detections scores AP 100 on each class present, difficult objects ignored (a detection
    on one is no false positive, missing it no miss), and 0 on the 17 classes absent."""
    # val_001 has a difficult dog, detected below; val_002 gets a difficult car, not detected.
    _rewrite(voc, "val_002", voc.objects["val_002"] + [VOCObject("car", (40, 40, 60, 60), 1)])
    voc.objects["val_002"] = voc.objects["val_002"] + [VOCObject("car", (40, 40, 60, 60), 1)]
    register_voc_dataset("voc_test_eval", str(voc.dirname), "val")
    evaluator = Trainer.build_evaluator(load_config(), "voc_test_eval", "unused")
    assert isinstance(evaluator, PascalVOCDetectionEvaluator)
    evaluator.reset()
    present = set()
    for record in DatasetCatalog.get("voc_test_eval"):
        objects = voc.objects[record["image_id"]]
        boxes = [a["bbox"] for a in record["annotations"]]
        classes = [a["category_id"] for a in record["annotations"]]
        present |= {VOC_CLASSES.index(o.name) for o in objects if not o.difficult}
        kept = [
            i for i, o in enumerate(objects) if record["image_id"] == "val_001" or not o.difficult
        ]
        evaluator.process(
            [{"image_id": record["image_id"]}],
            [_detections([boxes[i] for i in kept], [classes[i] for i in kept], [0.9] * len(kept))],
        )
    assert any(o.difficult for o in voc.objects["val_001"])
    results = evaluator.evaluate()["bbox"]
    assert set(results) == {"AP", "AP50", "AP75"}
    expected = 100 * len(present) / 20
    assert results["AP50"] == pytest.approx(expected)
    assert results["AP"] == pytest.approx(expected)
