"""Training progress on the terminal: a rich live bar on a TTY, one plain line per epoch otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def format_epoch(epoch: int, epochs: int, row: dict[str, float]) -> str:
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}", f"loss {row['loss']:.5g}"]
    if "val_loss" in row:
        parts.append(f"val_loss {row['val_loss']:.5g}")
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)


class PlainProgress:
    """One line per epoch: readable in logs, CI and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step_finished(self, step: int, loss: float | None) -> None:
        pass

    def epoch_finished(self, epoch: int, epochs: int, row: dict[str, float]) -> None:
        self.console.print(format_epoch(epoch, epochs, row), highlight=False, soft_wrap=True)

    def training_finished(self) -> None:
        pass


class RichProgress(PlainProgress):
    """A live bar for the current epoch (step, loss, ETA); finished epochs stay as plain lines
    unless `print_epochs` is off (compare shows one line per run instead)."""

    def __init__(self, console: Console, print_epochs: bool = True) -> None:
        super().__init__(console)
        self.print_epochs = print_epochs
        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("train", total=1, epoch="", loss="-", visible=False)
        self.bar.start()

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        self.bar.reset(self.task, total=steps, epoch=f"{epoch}/{epochs}", loss="-", visible=True)

    def step_finished(self, step: int, loss: float | None) -> None:
        self.bar.update(self.task, completed=step, loss="-" if loss is None else f"{loss:.4g}")

    def epoch_finished(self, epoch: int, epochs: int, row: dict[str, float]) -> None:
        if self.print_epochs:
            self.bar.console.print(format_epoch(epoch, epochs, row), highlight=False, soft_wrap=True)

    def training_finished(self) -> None:
        self.bar.stop()
