"""The base of every config section (defined in :mod:`qlora_kit.strict`, re-exported here)."""

from qlora_kit.strict import DType, StrictModel

__all__ = ["DType", "StrictModel"]
