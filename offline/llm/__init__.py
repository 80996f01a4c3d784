"""Local text generation through llama.cpp: engine cache, grounded prompts, streaming chat.

Nothing heavy is imported here; :mod:`offline.llm.engine` pulls in ``llama_cpp`` only when a model
is actually loaded.
"""
