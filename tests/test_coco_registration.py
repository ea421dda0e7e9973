"""--register-coco: a good COCO file registers; bad ones fail naming the file."""

import json

import pytest
from detectron2.data import DatasetCatalog

from fcos_d2.coco_dataset import DatasetError, register_coco_dataset


def write_coco(path, image_dir):
    image_dir.mkdir(exist_ok=True)
    content = {
        "images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}
        ],
        "categories": [{"id": 7, "name": "thing"}],
    }
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
        register_coco_dataset("test_reg_noimg", str(tmp_path / "ann.json"), str(tmp_path / "nowhere"))
