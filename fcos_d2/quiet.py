"""Third-party warnings that a user of fcos_d2 cannot act on, silenced narrowly.

Each is matched by its message and the module that raises it, so that any other warning
of the same libraries still shows. Imported first by ``fcos_d2/__init__.py``; entry
scripts import ``fcos_d2`` before Detectron2 so that import-time warnings are caught too.
"""

import logging
import warnings

# fvcore and Detectron2 script a few functions with torch.jit.script when imported.
warnings.filterwarnings(
    "ignore",
    message=r"`torch\.jit\.script` is deprecated",
    category=FutureWarning,
    module=r"torch\.jit\._script",
)
# detectron2.model_zoo imports pkg_resources.
warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Logged when Detectron2's environment report imports torch.utils.cpp_extension on a
# machine without the CUDA toolkit; fcos_d2 compiles nothing.
logging.getLogger("torch.utils.cpp_extension").addFilter(_DropMessages("No CUDA runtime is found"))
