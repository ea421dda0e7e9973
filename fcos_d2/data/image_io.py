"""Reading images as Detectron2 does, with 16-bit images scaled to 8 bits.

Detectron2's ``read_image`` converts 16-bit greyscale PNGs (PIL modes "I;16" and "I") to
RGB by clipping every value above 255, so a typical 16-bit image reads as all white.
Here such images are scaled to 8 bits first (65535 -> 255); everything else is read
exactly as Detectron2 reads it (EXIF orientation applied, then the requested format).
"""

import contextlib
from typing import Iterator, Optional

import numpy as np
from detectron2.data import detection_utils
from detectron2.utils.file_io import PathManager
from PIL import Image

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) greyscale image scaled to 8-bit "L"; others unchanged.

    16-bit values are divided by 257 (0..65535 -> 0..255); 32-bit integer images whose
    values exceed 16 bits are scaled by their maximum.
    """
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.float64)  # (H, W)
    top = values.max(initial=0.0)
    scale = 257.0 if top <= 65535 else top / 255.0
    return Image.fromarray(np.clip(np.round(values / scale), 0, 255).astype(np.uint8), mode="L")


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Detectron2's ``read_image`` (same arguments and result), 16-bit images scaled to 8 bits."""
    with PathManager.open(file_name, "rb") as f:
        image = Image.open(f)
        image = detection_utils._apply_exif_orientation(image)
        return detection_utils.convert_PIL_to_numpy(to_eight_bit(image), format)


@contextlib.contextmanager
def eight_bit_reading() -> Iterator[None]:
    """Within the block, Detectron2's data mappers read images with :func:`read_image`.

    Scoped to the block (a data-loader worker maps one image at a time), so nothing
    outside it sees the change.
    """
    original = detection_utils.read_image
    detection_utils.read_image = read_image
    try:
        yield
    finally:
        detection_utils.read_image = original
