"""Quantize a model (bnb NF4/INT8, GPTQ W4A16, INT8 W8A8) and report size and quality loss."""
