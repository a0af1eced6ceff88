"""Training: the :class:`Trainer` (a plain Accelerate loop) and its parts.

- ``loop``: the Trainer: the loop you can read top to bottom
- ``session``: one fit's live objects (accelerator, optimizer, schedule, resume) and :class:`TrainResult`
- ``state``: :class:`TrainerState`, the progress a checkpoint saves
- ``loss``: token-normalised causal-LM loss kinds (swappable :class:`LossFn`)
- ``optim``, ``schedule``: optimizer and learning-rate schedule kinds
- ``batches``: data order reproducible from (seed, epoch)
- ``checkpoint``: checkpoints in safetensors + JSON (never pickle), keep-last-K, resume checks
- ``guards``, ``interrupt``: stopping cleanly (non-finite loss, vanished gradients, SIGINT/SIGTERM)
- ``evaluation``: eval loss/perplexity and the generation panel
- ``tracking``: progress bar, metrics.jsonl, loss curve, trackers
- ``callbacks``: the :class:`Callback` hooks and callback kinds such as :class:`EarlyStopping`
- ``callback_kinds``: the built-in callback kinds the registry loads; ``profiling``: the ``profile`` callback (torch.profiler around a few steps: launches, syncs, device busy)
"""

from qlora_kit.training.callbacks import Callback, EarlyStopping
from qlora_kit.training.loop import Trainer
from qlora_kit.training.loss import LossFn, causal_lm_loss
from qlora_kit.training.result import TrainResult
from qlora_kit.training.state import TrainerState

__all__ = ["Callback", "EarlyStopping", "LossFn", "TrainResult", "Trainer", "TrainerState", "causal_lm_loss"]
