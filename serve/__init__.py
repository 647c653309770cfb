"""Serve a checkpoint (+ LoRA adapters) behind vLLM's OpenAI-compatible server."""
