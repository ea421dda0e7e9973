"""The size of a model: its parameter count and the FLOPs of one inference."""

import warnings
from typing import Dict, Optional, Tuple

from detectron2.utils.analysis import FlopCountAnalysis
from torch import nn

# The ops ``torch.profiler.record_function`` leaves in a traced graph (fcos_d2's forward
# marks its stages with it): they compute nothing, so they are not listed as uncounted.
PROFILER_RANGE_OPS = (
    "profiler::_record_function_enter",
    "profiler::_record_function_enter_new",
    "profiler::_record_function_exit",
)


def count_parameters(model: nn.Module) -> Dict[str, int]:
    """The number of parameters, in all and trainable."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def count_flops(model: nn.Module, inputs: tuple) -> Tuple[Optional[int], Optional[str]]:
    """FLOPs of one inference (fvcore: a multiply-add is one FLOP), or None and why not.

    Ops fvcore has no formula for (element-wise ops, NMS, ...) count as zero; their names
    are returned in the note.
    """
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.set_op_handle(**{op: None for op in PROFILER_RANGE_OPS})
            total = int(analysis.total())
            skipped = sorted(analysis.unsupported_ops())
    except Exception as error:  # noqa: BLE001  any tracing failure: report, do not crash
        return None, f"FLOP count failed: {type(error).__name__}: {str(error)[:300]}"
    finally:
        model.train(was_training)
    return total, (f"not counted: {', '.join(skipped)}" if skipped else None)
