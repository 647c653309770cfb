"""The traffic store: the LLM API calls a team really makes, recorded or imported, and the report that sizes them.

`offramp traffic import` fills the store from logs (OpenAI Batch API files, SDK request/response logs, chat
JSONL); `offramp traffic report` summarises a window of it (volume, peaks, tokens, spend, duplicates, shared
prefixes, label set). The store API (`offramp.traffic.store`) is what a capture proxy writes through.
"""
