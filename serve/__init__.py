"""Serve a checkpoint (+ LoRA adapters) behind vLLM's OpenAI-compatible server, and benchmark it."""

from offramp.serve.server import VllmServer

__all__ = ["VllmServer"]
