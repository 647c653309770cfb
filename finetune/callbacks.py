"""Trainer callbacks: rich progress (step, loss, tokens/s, ETA) and a graceful stop that checkpoints on Ctrl-C."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from transformers import TrainerCallback


class RichProgress(TrainerCallback):
    """A live bar on a terminal; one plain line per logging step otherwise (CI logs, pipes)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress: Any = None
        self.task: Any = None
        self.t0 = 0.0
        self.tokens0 = 0
        self.loss = float("nan")

    def tokens_per_s(self, state: Any) -> float:
        elapsed = time.perf_counter() - self.t0
        return (state.num_input_tokens_seen - self.tokens0) / elapsed if elapsed > 0 and self.t0 else 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]finetune"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:.0f} tok/s  ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=state.max_steps, completed=state.global_step, loss=self.loss, tps=0.0
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, tps=self.tokens_per_s(state), loss=self.loss)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.loss = logs["loss"]
        if self.progress is None:
            done = state.global_step
            tps = self.tokens_per_s(state)
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / max(1, done - getattr(self, "_step0", 0)) * (state.max_steps - done)
            print(
                f"step {done}/{state.max_steps}  loss {self.loss:.4f}  {tps:.0f} tok/s  ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not hasattr(self, "_step0"):
            self._step0 = state.global_step  # steps done before a resume do not count towards the rate

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class GracefulStop(TrainerCallback):
    """First SIGINT/SIGTERM: finish the step, save a checkpoint, stop. A second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("offramp: stopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
