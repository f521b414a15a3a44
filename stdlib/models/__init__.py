"""Model adapters: the site vocabulary, one table per architecture, native HF modules with hooks.

- `sites.py`: `SiteKind` records (the vocabulary), `Site`, `HookPoint`, `ArchTable`, the registry
  keyed by HF `model_type` (no torch).
- `archs/`: one table per architecture (gpt2, neox, llama, bert), pure data (no torch).
- `base.py`: `Adapter` (capture / edit sites on a loaded model), `Edit`, `load_adapter`.
- `batching.py`: chunked forwards and captures over right-padded datasets.
- `sources.py`: the `hf` and `zoo` model sources (describe, locate, load).
- `tiny.py`: a tiny random GPT-2 with a word-level tokenizer, for tests.
"""

from mechstudy.stdlib.models.sites import KINDS, ArchTable, HookPoint, Site, arch_for, register_arch

__all__ = ["KINDS", "ArchTable", "HookPoint", "Site", "arch_for", "register_arch"]
