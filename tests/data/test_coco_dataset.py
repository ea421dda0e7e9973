"""--register-coco (fcos_d2.data.coco_dataset): a good COCO file registers; bad ones
fail naming the file, annotation or category; category ids need not be contiguous."""

import json

import pytest
from detectron2.data import DatasetCatalog

from fcos_d2.data.coco_dataset import DatasetError, check_coco_json, register_coco_dataset


# Category ids not contiguous, or not in the metadata.
def test_non_contiguous_category_ids_are_mapped(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from fcos_d2.data.coco_dataset import register_coco_dataset

    content = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 17,
                "bbox": [0, 0, 4, 4],
                "area": 16,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 5,
                "bbox": [1, 1, 4, 4],
                "area": 16,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 5, "name": "five"}, {"id": 17, "name": "seventeen"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(content))
    (tmp_path / "a.png").write_bytes(b"")  # registration checks the file exists
    register_coco_dataset("reliability_sparse_ids", str(tmp_path / "a.json"), str(tmp_path))
    records = DatasetCatalog.get("reliability_sparse_ids")
    assert [a["category_id"] for a in records[0]["annotations"]] == [1, 0]
    assert MetadataCatalog.get("reliability_sparse_ids").thing_classes == ["five", "seventeen"]


def test_category_id_not_in_categories_is_named(tmp_path):
    content = {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1]}],
        "categories": [{"id": 1, "name": "one"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"\[99\]"):
        check_coco_json(str(tmp_path / "a.json"))


def write_coco(path, image_dir, **changes):
    """A one-image COCO file and its image; ``changes`` edit the annotation."""
    image_dir.mkdir(exist_ok=True)
    (image_dir / "a.png").write_bytes(b"")  # registration checks it exists, not reads it
    content = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [1, 2, 3, 4],
                "area": 12,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 7, "name": "thing"}],
    }
    annotation = content["annotations"][0]
    for key, value in changes.items():
        if value is None:
            del annotation[key]
        else:
            annotation[key] = value
    path.write_text(json.dumps(content))


def test_registers_a_valid_dataset(tmp_path):
    write_coco(tmp_path / "ann.json", tmp_path / "images")
    register_coco_dataset("test_reg_valid", str(tmp_path / "ann.json"), str(tmp_path / "images"))
    records = DatasetCatalog.get("test_reg_valid")
    assert len(records) == 1
    assert records[0]["annotations"][0]["category_id"] == 0  # id 7 mapped to contiguous 0


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ('["a list"]', "JSON object"),
        ('{"images": []}', "lacks the keys"),
    ],
)
def test_bad_json_is_an_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message) as error:
        register_coco_dataset("test_reg_bad", str(path), str(tmp_path))
    assert str(path) in str(error.value)
    assert "test_reg_bad" not in DatasetCatalog.list()


def test_missing_image_dir_is_named(tmp_path):
    write_coco(tmp_path / "ann.json", tmp_path / "images")
    with pytest.raises(DatasetError, match="nowhere"):
        register_coco_dataset(
            "test_reg_noimg", str(tmp_path / "ann.json"), str(tmp_path / "nowhere")
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"category_id": None}, r"annotation id 1 lacks \['category_id'\]"),
        ({"bbox": [1, 2, 3]}, r"annotation id 1 has bbox \[1, 2, 3\]"),
        ({"image_id": 5}, r"annotation id 1 refers to image_id 5"),
    ],
)
def test_bad_annotation_is_named_by_file_and_id(tmp_path, changes, message):
    write_coco(tmp_path / "ann.json", tmp_path / "images", **changes)
    with pytest.raises(DatasetError, match=message) as error:
        register_coco_dataset(
            "test_reg_bad_annotation", str(tmp_path / "ann.json"), str(tmp_path / "images")
        )
    assert str(tmp_path / "ann.json") in str(error.value)


def test_missing_image_file_is_named_before_anything_runs(tmp_path):
    write_coco(tmp_path / "ann.json", tmp_path / "images")
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image file\(s\) not found under .*images: a.png"):
        register_coco_dataset(
            "test_reg_noimage", str(tmp_path / "ann.json"), str(tmp_path / "images")
        )


def test_missing_area_is_computed_from_polygon_or_box(tmp_path):
    from detectron2.data import MetadataCatalog
    from pycocotools.coco import COCO

    write_coco(tmp_path / "box.json", tmp_path / "images", area=None, iscrowd=None)
    register_coco_dataset("test_reg_area_box", str(tmp_path / "box.json"), str(tmp_path / "images"))
    polygon = [1, 2, 4, 2, 4, 6]  # right triangle with legs 3 and 4: area 6
    write_coco(tmp_path / "poly.json", tmp_path / "images", area=None, segmentation=[polygon])
    register_coco_dataset(
        "test_reg_area_poly", str(tmp_path / "poly.json"), str(tmp_path / "images")
    )
    for name, area in (("test_reg_area_box", 12.0), ("test_reg_area_poly", 6.0)):
        completed = MetadataCatalog.get(name).json_file
        assert completed != str(tmp_path / "box.json")
        annotation = COCO(completed).dataset["annotations"][0]  # what COCOEvaluator reads
        assert annotation["area"] == pytest.approx(area) and annotation["iscrowd"] == 0
        assert len(DatasetCatalog.get(name)) == 1
