"""16-bit images are scaled to 8 bits (not clipped to white) by fcos_d2.data.image_io,
wherever fcos_d2 reads images (the mappers included)."""

import cv2
import numpy as np
import pytest
from conftest import QUICK_CONFIG, load_config
from detectron2.data import detection_utils

from fcos_d2.data.dataset_mapper import CrowdAwareDatasetMapper, EightBitDatasetMapper
from fcos_d2.data.image_io import read_image


@pytest.fixture
def gradient_16_bit(tmp_path):
    """A 16-bit greyscale PNG whose columns go from 0 to 65535."""
    values = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (32, 1))  # (32, 64)
    path = tmp_path / "gradient16.png"
    cv2.imwrite(str(path), values)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    return path, values


def test_detectron2_reads_it_white_and_we_read_the_gradient(gradient_16_bit):
    path, values = gradient_16_bit
    clipped = detection_utils.read_image(str(path), format="BGR")
    assert clipped[:, 1:].min() == 255  # the bug this module exists for (first column is 0)
    image = read_image(str(path), format="BGR")
    assert image.shape == (32, 64, 3) and image.dtype == np.uint8
    expected = np.round(values / 257).astype(np.uint8)
    np.testing.assert_array_equal(image[:, :, 0], expected)
    np.testing.assert_array_equal(image[:, :, 1], image[:, :, 2])
    assert image.min() == 0 and image.max() == 255


def test_eight_bit_images_read_as_detectron2_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "colour.png"
    cv2.imwrite(str(path), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for fmt in ("BGR", "RGB", "L"):
        np.testing.assert_array_equal(
            read_image(str(path), fmt), detection_utils.read_image(str(path), fmt)
        )


@pytest.mark.parametrize("mapper_class", [EightBitDatasetMapper, CrowdAwareDatasetMapper])
def test_mappers_read_16_bit_images_and_leave_detectron2_alone(gradient_16_bit, mapper_class):
    path, values = gradient_16_bit
    cfg = load_config(QUICK_CONFIG, ["INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64"])
    mapped = mapper_class(cfg, False)(
        {"file_name": str(path), "height": 32, "width": 64, "image_id": 1}
    )
    image = mapped["image"]  # (3, H, W)
    assert int(image.max()) == 255 and int(image.min()) == 0
    assert image[0, 0].tolist() == np.round(values[0] / 257).tolist()
    assert detection_utils.read_image is not read_image  # the swap is scoped to the call
