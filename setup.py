"""fcos_d2: FCOS as a Detectron2 extension."""

from setuptools import find_packages, setup

setup(
    name="fcos_d2",
    version="0.1.0",
    description="FCOS: Fully Convolutional One-Stage Object Detection, as a Detectron2 extension",
    packages=find_packages(exclude=("tests", "tests.*")),
    python_requires=">=3.10",
    # torch / torchvision / detectron2 are installed by `make setup` (see Makefile):
    # detectron2 is not on the package index under its own name.
    install_requires=[
        "numpy>=2",
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
        "fvcore",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools",
        "opencv-python-headless",
        "Pillow",
        "matplotlib",
        "termcolor",
        "yacs",
        "tabulate",
        "cloudpickle",
        "tqdm",
        "tensorboard",
        "omegaconf>=2.1,<2.4",
        "hydra-core>=1.1",
        "packaging",
    ],
    extras_require={
        # tools/export.py --format onnx: torch.onnx.export(dynamo=True), checked with onnxruntime.
        "export": ["onnx", "onnxscript", "onnxruntime"],
        "test": ["pytest", "pytest-timeout", "onnx", "onnxscript", "onnxruntime", "ruff"],
    },
)
