"""LoRA / QLoRA fine-tune on chat JSONL."""
