"""``qlora-kit quickstart``: QLoRA on SmolLM2-135M offline, scored before and after (:mod:`.run`),
on a generated word-reversal task (:mod:`.task`)."""

from qlora_kit.quickstart.run import QuickstartResult, Score, quickstart, quickstart_config, smollm2_gguf

__all__ = ["QuickstartResult", "Score", "quickstart", "quickstart_config", "smollm2_gguf"]
