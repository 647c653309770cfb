import typer

from offramp.placeholder import placeholder


def register(app: typer.Typer) -> None:
    placeholder(app, "serve", "Serve a checkpoint (+ LoRA adapters) behind vLLM's OpenAI-compatible server", 4)
    placeholder(app, "bench", "Benchmark an OpenAI-compatible endpoint with vLLM's bench; $ per 1M tokens", 4)
