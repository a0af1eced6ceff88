"""The built-in callback kinds, imported by the callback registry on first lookup: each registers itself."""

from qlora_kit.training.callbacks import EarlyStopping
from qlora_kit.training.profiling import ProfileSteps

__all__ = ["EarlyStopping", "ProfileSteps"]
