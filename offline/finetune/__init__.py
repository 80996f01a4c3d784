"""On-prem LoRA fine-tuning: train on a GGUF base, export a GGUF LoRA, keep it encrypted in the vault.

Heavy libraries (torch, transformers, peft, llama_cpp) are imported inside functions only.
"""
