"""qlora_extras: a plugin package, as a team would ship one, that adds four component kinds to qlora_kit.

Importing it registers them (``plugins: [plugins.qlora_extras]`` in a config, with ``examples/`` on
``PYTHONPATH``; an installed package would be named by its own import name):

- quantization kind ``mixed_4_8`` (:mod:`.mixed_quant`): NF4 layers, with chosen layers in LLM.int8();
- exporter ``publish`` (:mod:`.publish`): the adapter copied into a model store with a summary;
- loss ``label_smoothing`` (:mod:`.smoothing`);
- callback ``status_file`` (:mod:`.status`): the run's progress in a JSON file.

``docs/plugins.md`` walks through them.
"""

from . import mixed_quant, publish, smoothing, status

__all__ = ["mixed_quant", "publish", "smoothing", "status"]
