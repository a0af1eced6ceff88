"""``python -m qlora_kit.cli``: the `qlora-kit` command."""

from qlora_kit.cli import main

raise SystemExit(main())
