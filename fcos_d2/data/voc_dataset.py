"""Register a Pascal VOC-format dataset given on the command line, checking it first.

``--register-voc NAME DIR SPLIT`` registers the images listed in
``DIR/ImageSets/Main/SPLIT.txt`` with Detectron2's own ``register_pascal_voc``: each id has
``DIR/Annotations/ID.xml`` and ``DIR/JPEGImages/ID.jpg``, and the classes are VOC's 20
(Detectron2's ``CLASS_NAMES``, in its order) unless a caller gives others.

What Detectron2 does with the data, and so what is checked here:

- Its loader (``load_voc_instances``) reads ``size/width``, ``size/height`` and, for each
  ``<object>``, ``name`` and ``bndbox``; it keeps *difficult* objects for training like the
  others (they "don't hurt accuracy", says its source), and subtracts 1 from ``xmin`` and
  ``ymin``: VOC boxes are 1-based inclusive pixel indices, so ``(1, 1, W, H)`` is the whole
  image, ``[0, W] x [0, H]`` in Detectron2's coordinates.
- ``PascalVOCDetectionEvaluator`` reads the XML files itself, not the loaded records: each
  object's ``pose``, ``truncated`` and ``difficult``, and the box with ``int()``. Difficult
  objects are ignored there as VOC's devkit does: not counted among the objects to find,
  and a detection matched to one is neither a true nor a false positive.

The check parses every XML file once. A fault is a :class:`DatasetError` naming the file
(and the object, numbered from 1 in file order) before anything is registered or written.

The year given to Detectron2 (used only by the evaluator: VOC 2007's 11-point AP, else
the area under the precision-recall curve) is 2007 when DIR's own name contains "2007"
(``VOC2007``, ``VOCdevkit/VOC2007``), else 2012.
"""

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_pascal_voc
from detectron2.data.datasets.pascal_voc import CLASS_NAMES

from .coco_dataset import DatasetError

VOC_CLASSES: Tuple[str, ...] = tuple(CLASS_NAMES)
_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
_SUBDIRECTORIES = ("JPEGImages", "Annotations")
_SHOWN = 5  # ids or classes listed in a message before "..."


def voc_year(dirname: str) -> int:
    """2007 when the directory's own name contains "2007", else 2012."""
    return 2007 if "2007" in os.path.basename(os.path.normpath(dirname)) else 2012


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (" ..." if len(items) > _SHOWN else "")


def read_split(dirname: str, split: str) -> List[str]:
    """The image ids of ``DIR/ImageSets/Main/SPLIT.txt``, after checking the layout.

    Raises:
        DatasetError: naming the directory or split file that is missing, or a split file
            that is empty or not one id per line.
    """
    if not os.path.isdir(dirname):
        raise DatasetError(f"Pascal VOC directory not found: {dirname}")
    for subdirectory in _SUBDIRECTORIES:
        if not os.path.isdir(os.path.join(dirname, subdirectory)):
            raise DatasetError(f"Pascal VOC directory {dirname} has no {subdirectory}/")
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise DatasetError(f"Pascal VOC split file not found: {split_file}")
    with open(split_file) as f:
        lines = [line.split() for line in f]
    ids = [words[0] for words in lines if words]
    if not ids:
        raise DatasetError(f"Pascal VOC split file {split_file} is empty: it lists no image ids")
    bad = [i for i, words in enumerate(lines, start=1) if len(words) > 1]
    if bad:
        raise DatasetError(
            f"Pascal VOC split file {split_file}: line {bad[0]} holds {len(lines[bad[0] - 1])} "
            "words; expected one image id per line"
        )
    if len(ids) == 1:
        # load_voc_instances reads the file with np.loadtxt, which gives a 0-d array here.
        raise DatasetError(
            f"Pascal VOC split file {split_file} lists one image id; Detectron2's VOC loader "
            "needs at least two"
        )
    return ids


def _check_files(dirname: str, split: str, ids: Sequence[str]) -> None:
    """Every id has its Annotations/ID.xml and JPEGImages/ID.jpg (one listing per folder)."""
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    for subdirectory, suffix in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
        folder = os.path.join(dirname, subdirectory)
        present = set(os.listdir(folder))
        missing = [i for i in ids if i + suffix not in present]
        if missing:
            raise DatasetError(
                f"Pascal VOC split file {split_file}: {len(missing)} id(s) without "
                f"{folder}/ID{suffix}: {_listed(missing)}"
            )


@dataclass
class _UnknownClasses:
    """Class names not in the class list: how many objects have each, first file for each."""

    counts: Dict[str, int] = field(default_factory=dict)
    first_file: Dict[str, str] = field(default_factory=dict)

    def add(self, name: str, xml_file: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        self.first_file.setdefault(name, xml_file)

    def message(self, annotation_dir: str, class_names: Sequence[str]) -> str:
        found = "; ".join(
            f"{name!r} ({count} object(s), first in {self.first_file[name]})"
            for name, count in sorted(self.counts.items())
        )
        return (
            f"Pascal VOC annotations {annotation_dir}: {len(self.counts)} class name(s) not in "
            f"the {len(class_names)} classes ({', '.join(class_names)}): {found}"
        )


def _text(element: ET.Element, path: str, where: str) -> str:
    """The text of ``element``'s child at ``path``; a missing child is an error."""
    child = element.find(path)
    if child is None:
        raise DatasetError(f"{where} lacks <{path}>")
    return child.text or ""


def _integer(element: ET.Element, path: str, where: str) -> int:
    """``_text`` read as an integer, as Detectron2's loader and evaluator read it."""
    text = _text(element, path, where)
    try:
        return int(text)
    except ValueError:
        raise DatasetError(
            f"{where}: <{path}> is {text.strip()!r}, not an integer (VOC sizes and boxes are "
            "integer pixels; Detectron2's VOC loader and evaluator read them with int())"
        ) from None


def _check_object(obj: ET.Element, where: str, width: int, height: int) -> None:
    """One ``<object>``: the fields the evaluator reads, and its box inside the image."""
    _text(obj, "pose", where)
    _integer(obj, "truncated", where)
    difficult = _integer(obj, "difficult", where)
    if difficult not in (0, 1):
        raise DatasetError(f"{where}: <difficult> is {difficult}; expected 0 or 1")
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DatasetError(f"{where} lacks <bndbox>")
    xmin, ymin, xmax, ymax = (_integer(bndbox, key, where + " <bndbox>") for key in _BOX_KEYS)
    box = f"box (xmin {xmin}, ymin {ymin}, xmax {xmax}, ymax {ymax})"
    # 1-based inclusive: xmin == xmax is a box one pixel wide ([xmin - 1, xmax] once loaded).
    if xmax < xmin or ymax < ymin:
        raise DatasetError(f"{where}: degenerate {box}: xmax < xmin or ymax < ymin")
    if xmin < 1 or ymin < 1 or xmax > width or ymax > height:
        raise DatasetError(
            f"{where}: {box} outside the {width}x{height} image (VOC boxes are 1-based: "
            "1 <= xmin, xmax <= width, 1 <= ymin, ymax <= height)"
        )


def _check_annotation(xml_file: str, class_names: Sequence[str], unknown: _UnknownClasses) -> None:
    """One annotation file: parses, has a size, and each object is sound. Unknown class
    names are collected in ``unknown`` (to be reported all together), not raised."""
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"Pascal VOC annotation {xml_file} is not valid XML: {e}") from e
    width = _integer(root, "size/width", xml_file)
    height = _integer(root, "size/height", xml_file)
    if width < 1 or height < 1:
        raise DatasetError(f"{xml_file}: image size {width}x{height} is not positive")
    for index, obj in enumerate(root.findall("object"), start=1):
        name = obj.find("name")
        if name is None or not name.text:
            raise DatasetError(f"{xml_file}: <object> #{index} lacks <name>")
        where = f"{xml_file}: <object> #{index} ({name.text!r})"
        _check_object(obj, where, width, height)
        if name.text not in class_names:  # the loader looks the name up as it is
            unknown.add(name.text, xml_file)


def check_voc_dataset(
    dirname: str, split: str, class_names: Sequence[str] = VOC_CLASSES
) -> List[str]:
    """Check a VOC-format split as Detectron2's loader and evaluator will read it.

    Returns:
        The split's image ids.

    Raises:
        DatasetError: naming the directory, file or object at fault; unknown class names
            are listed all together, each with its count of objects and first file.
    """
    ids = read_split(dirname, split)
    _check_files(dirname, split, ids)
    annotation_dir = os.path.join(dirname, "Annotations")
    unknown = _UnknownClasses()
    for image_id in ids:
        _check_annotation(os.path.join(annotation_dir, f"{image_id}.xml"), class_names, unknown)
    if unknown.counts:
        raise DatasetError(unknown.message(annotation_dir, class_names))
    return ids


def _register(name: str, dirname: str, split: str, class_names: Sequence[str]) -> None:
    register_pascal_voc(name, dirname, split, voc_year(dirname), class_names=list(class_names))
    # Detectron2's built-in VOC sets get this beside register_pascal_voc; Trainer reads it.
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"


def register_voc_dataset(
    name: str, dirname: str, split: str, class_names: Sequence[str] = VOC_CLASSES
) -> None:
    """Register a VOC-format split under ``name`` after checking it, before anything runs.

    The metadata has Detectron2's ``thing_classes``, ``dirname``, ``year`` (see
    :func:`voc_year`), ``split``, and ``evaluator_type`` "pascal_voc".

    Raises:
        DatasetError: naming the directory, file or object at fault, or the name already taken.
    """
    if name in DatasetCatalog.list():
        raise DatasetError(f"dataset name {name!r} is already registered")
    check_voc_dataset(dirname, split, class_names)
    _register(name, dirname, split, class_names)


def register_voc_datasets(specs: Iterable[Tuple[str, str, str]]) -> None:
    """Register each (name, dir, split) of ``--register-voc``: all are checked first, so
    none is registered when one is at fault."""
    specs = list(specs)
    names = [name for name, _, _ in specs]
    for name in names:
        if name in DatasetCatalog.list():
            raise DatasetError(f"dataset name {name!r} is already registered")
        if names.count(name) > 1:
            raise DatasetError(f"dataset name {name!r} is given to --register-voc twice")
    for _, dirname, split in specs:
        check_voc_dataset(dirname, split)
    for name, dirname, split in specs:
        _register(name, dirname, split, VOC_CLASSES)


def add_register_voc_argument(parser) -> None:
    """``--register-voc NAME DIR SPLIT`` (repeatable), shared by the entry points."""
    parser.add_argument(
        "--register-voc",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "DIR", "SPLIT"),
        help="register a Pascal VOC-format split (DIR/ImageSets/Main/SPLIT.txt, Annotations/, "
        "JPEGImages/; VOC's 20 classes) under NAME before the config uses it (repeatable); "
        "year 2007 (11-point AP) when DIR's name contains 2007, else 2012",
    )
