#!/usr/bin/env bash
# Install Detectron2 into the given Python environment, unless it already imports.
#
# Detectron2 is not on the package index under its own name. What works here
# (see ../shared/notes/detectron2-install.md): the `sal-detectron2` wheel, which
# carries upstream Detectron2's Python package. It is tagged for CPython 3.10 but
# its Python code is version-independent, so it is installed under a py3 name.
# Its compiled `_C` is never loaded on other Pythons; Detectron2 then falls back
# to torchvision ops, which is all fcos_d2 needs.
set -euo pipefail

PY=${1:?usage: install_detectron2.sh PYTHON}
WHEEL_VERSION=0.7.2

# find_spec, not import: detectron2's own dependencies come with `pip install -e .` after this.
if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('detectron2') is None)"; then
  echo "detectron2 already installed in $PY: left alone"
  exit 0
fi

wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
  -d "$wheel_dir" "sal-detectron2==$WHEEL_VERSION"
src=$(ls "$wheel_dir"/sal_detectron2-*.whl)
dst="$wheel_dir/sal_detectron2-$WHEEL_VERSION-py3-none-any.whl"
cp "$src" "$dst"
"$PY" -m pip install -q --no-deps "$dst"
echo "installed detectron2 from sal-detectron2==$WHEEL_VERSION"
