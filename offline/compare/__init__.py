"""``offline compare``: base vs RAG vs fine-tune vs hybrid, measured on the user's own data.

Heavy libraries (llama_cpp, torch, matplotlib) are imported inside functions only.
"""

from __future__ import annotations

from .run import MODE_ORDER, run_compare

__all__ = ["MODE_ORDER", "run_compare"]
