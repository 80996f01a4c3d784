"""offline: a privacy-first kit to run a local LLM over sensitive documents, air-gapped."""

__version__ = "0.1.0"
