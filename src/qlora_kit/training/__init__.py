"""Training: the :class:`Trainer` (a plain Accelerate loop) and its parts.

- ``loop``: the Trainer and :class:`TrainResult`
- ``loss``: token-normalised causal-LM loss (swappable :class:`LossFn`)
- ``optim``: optimizer and schedule factories
- ``batches``: data order reproducible from (seed, epoch)
- ``checkpoint``: atomic checkpoints, keep-last-K, resume checks
- ``evaluation``: eval loss/perplexity and the generation panel
- ``tracking``: progress bar, metrics.jsonl, loss curve, trackers
- ``callbacks``: the :class:`Callback` hooks and :class:`EarlyStopping`
"""

from qlora_kit.training.callbacks import Callback, EarlyStopping
from qlora_kit.training.loop import Trainer, TrainResult
from qlora_kit.training.loss import LossFn, causal_lm_loss
from qlora_kit.training.state import TrainerState

__all__ = ["Callback", "EarlyStopping", "LossFn", "TrainResult", "Trainer", "TrainerState", "causal_lm_loss"]
