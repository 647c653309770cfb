"""offramp: can a small, quantized, LoRA-tuned model served by vLLM replace the API call, and when does it pay?"""

__version__ = "0.1.0"
