"""A tiny Pascal VOC-format dataset written for the tests (tests/ is on sys.path).

Layout as VOC's: ``DIR/JPEGImages/ID.jpg``, ``DIR/Annotations/ID.xml`` and
``DIR/ImageSets/Main/SPLIT.txt``. Images are 64 x 64 by default, each with 1-3 filled
rectangles of three VOC classes (one colour per class); boxes are VOC's 1-based inclusive
pixel indices. One box touches two borders of its image and one object is difficult.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw

CLASSES = ("cat", "dog", "car")
COLOURS = {"cat": (230, 60, 40), "dog": (40, 200, 60), "car": (50, 80, 230)}


@dataclass
class VOCObject:
    """One ``<object>``: a class name, a 1-based inclusive box, the difficult flag."""

    name: str
    box: Sequence[int]  # xmin, ymin, xmax, ymax
    difficult: int = 0


@dataclass
class VOCFixture:
    """Where the dataset is, and what each image's XML says."""

    dirname: Path
    splits: Dict[str, List[str]] = field(default_factory=dict)
    objects: Dict[str, List[VOCObject]] = field(default_factory=dict)
    size: int = 64

    def xml(self, image_id: str) -> Path:
        return self.dirname / "Annotations" / f"{image_id}.xml"


def annotation_xml(
    image_id: str, width: int, height: int, objects: Sequence[VOCObject], depth: int = 3
) -> str:
    """A VOC annotation file's text, with every field VOC's own files have."""
    parts = [
        "<annotation>",
        "  <folder>VOCtiny</folder>",
        f"  <filename>{escape(image_id)}.jpg</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>{depth}</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.box
        parts += [
            "  <object>",
            f"    <name>{escape(obj.name)}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{obj.difficult}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join(parts + ["</annotation>", ""])


def _random_objects(rng: random.Random, size: int) -> List[VOCObject]:
    objects = []
    for _ in range(rng.randint(1, 3)):
        width, height = rng.randint(12, size // 2), rng.randint(12, size // 2)
        xmin, ymin = rng.randint(1, size - width), rng.randint(1, size - height)
        objects.append(VOCObject(rng.choice(CLASSES), (xmin, ymin, xmin + width, ymin + height)))
    return objects


def _draw(path: Path, size: int, objects: Sequence[VOCObject], rng: random.Random) -> None:
    image = Image.new("RGB", (size, size), tuple(rng.randint(90, 140) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.box
        # Pixels xmin..xmax (1-based, inclusive) are 0-based xmin - 1 .. xmax - 1.
        draw.rectangle((xmin - 1, ymin - 1, xmax - 1, ymax - 1), fill=COLOURS[obj.name])
    image.save(path, quality=95)


def write_voc_dataset(
    root: Path,
    splits: Optional[Dict[str, int]] = None,
    name: str = "VOCtiny",
    size: int = 64,
    seed: int = 0,
) -> VOCFixture:
    """Write a tiny VOC-format dataset to ``root / name``: by default 6 train, 3 val images.

    Image ``<split>_000`` has a box from (1, 1) to (size // 2, size) touching two borders;
    ``val_001`` gets one extra difficult object.
    """
    splits = splits or {"train": 6, "val": 3}
    dirname = Path(root) / name
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (dirname / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    fixture = VOCFixture(dirname, size=size)
    for split, count in splits.items():
        ids = [f"{split}_{i:03d}" for i in range(count)]
        for index, image_id in enumerate(ids):
            objects = _random_objects(rng, size)
            if index == 0:
                objects[0] = VOCObject(objects[0].name, (1, 1, size // 2, size))
            if image_id == "val_001":
                objects.append(VOCObject("dog", (5, 5, 20, 24), difficult=1))
            _draw(dirname / "JPEGImages" / f"{image_id}.jpg", size, objects, rng)
            fixture.xml(image_id).write_text(annotation_xml(image_id, size, size, objects))
            fixture.objects[image_id] = objects
        (dirname / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        fixture.splits[split] = ids
    return fixture
