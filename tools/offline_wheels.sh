#!/usr/bin/env bash
# Download the wheels fcos_d2 needs beside torch/torchvision, for a machine with no network
# (a GPU machine, say) that already has torch, torchvision, numpy, matplotlib, tensorboard,
# tabulate, tqdm, cloudpickle, portalocker, pillow, pyyaml, packaging and
# opencv-python-headless.
#
#   tools/offline_wheels.sh DIR [PYTHON_VERSION]     # on a machine with network; default 3.12
# then, on the offline machine, from the repository root, either tools/gpu_check.sh (which
# installs from .whl/ what is missing) or by hand:
#   pip install --no-index --no-deps --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site:. python3 tools/benchmark.py --device cuda
# `make gpu-wheels` writes them to .whl/ (ignored by git; carry it to the GPU machine).
#
# Detectron2 comes from the sal-detectron2 wheel renamed to py3, as in install_detectron2.sh.
set -euo pipefail

DIR=${1:?usage: offline_wheels.sh DIR [PYTHON_VERSION]}
PYVER=${2:-3.12}
PY=${PYTHON:-python3}
mkdir -p "$DIR"

# setuptools < 81 still has pkg_resources, which detectron2.model_zoo imports.
pure=(hydra-core==1.3.8 omegaconf==2.3.1 yacs==0.1.8 termcolor==3.3.0 iopath==0.1.9
      setuptools==80.10.2)
# Published as source only: built here (pure Python, so the wheel fits any version).
source_only=(fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3)

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DIR" pycocotools==2.0.11
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
  -d "$DIR" "${pure[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DIR" "${source_only[@]}"

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
  -d "$DIR" sal-detectron2==0.7.2
mv "$DIR"/sal_detectron2-0.7.2-cp310-none-any.whl "$DIR"/sal_detectron2-0.7.2-py3-none-any.whl
ls "$DIR"
