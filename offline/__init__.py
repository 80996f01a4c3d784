"""offline: a privacy-first kit to run a local LLM over sensitive documents, air-gapped."""

import os as _os

# llama.cpp and torch's OpenMP threads spin-wait by default; on a busy 2-core laptop that made a
# 35-token prompt take 5-12 s to first token instead of <1 s. The policy is read once, when the
# first OpenMP runtime loads, so it must be set here, before anything imports torch or llama_cpp.
# A value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
