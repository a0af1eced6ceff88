"""What quantization does to a model: parameter counts, sizes, module and dtype changes, adapter arithmetic.

:func:`inspect_model` loads what a run config describes; :func:`inspect_loaded` measures loaded models.
"""

from qlora_kit.inspection.measure import inspect_loaded, inspect_model
from qlora_kit.inspection.report import InspectionReport

__all__ = ["InspectionReport", "inspect_loaded", "inspect_model"]
