"""Rich progress bars shared by long-running work (training, profiling, evaluation)."""
from __future__ import annotations


from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vitdeploy import distributed

console = Console(stderr=True)


def make_progress(transient: bool = False) -> Progress:
    """A bar with a free-text `info` field for live metrics; on a non-terminal (CI logs) it stays quiet until done."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=transient, disable=not distributed.is_main(),
    )
