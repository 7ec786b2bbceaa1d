"""What a training run shows while it runs: the remaining time of the log line, and a progress bar when stderr
is a terminal."""

from __future__ import annotations


def format_eta(seconds: float) -> str:
    """Remaining time for the log line: "45s", "12m05s", "3h07m" (rounded to the unit shown)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    m = int(round(s / 60))
    return f"{m // 60}h{m % 60:02d}m"


def progress_bar(total: int, start: int):
    """A rich progress bar on stderr (steps, loss, rate, ETA); only used when stderr is a terminal."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    # on stderr, the terminal that was checked (rich's default console is stdout: with stdout redirected the bar
    # was drawn nowhere and the log lines were off too)
    prog = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)
    task = prog.add_task("train", total=total, completed=start, loss=float("nan"))
    prog.start()
    return prog, task


