"""Data: the dataset mapper, COCO registration and its checks, image reading, and the
built-in datasets (importing registers ``shapes_*``)."""

from . import datasets  # noqa: F401  (registers the built-in datasets)
