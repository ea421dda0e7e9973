"""Datasets built into fcos_d2. Importing registers ``shapes_train``, ``shapes_val``,
``shapes_crowd_train`` and ``shapes_crowd_val`` (generated on first use)."""

from .shapes import (
    SHAPES_CLASSES,
    ensure_shapes_split,
    generate_shapes_split,
    register_builtin_shapes,
    register_shapes_split,
    shapes_root,
)

register_builtin_shapes()

__all__ = [
    "SHAPES_CLASSES",
    "ensure_shapes_split",
    "generate_shapes_split",
    "register_builtin_shapes",
    "register_shapes_split",
    "shapes_root",
]
