"""What a run shows while a member trains: a progress bar on a terminal, one plain line per epoch
elsewhere (a file, a pipe, a pod log), where a bar draws nothing and a long member would
otherwise print nothing until it ends."""

from __future__ import annotations

import sys
from typing import Literal

Display = Literal["bar", "lines", "none"]


def choose_display(progress: bool | None, *, isatty: bool | None = None) -> Display:
    """``progress=None`` (the default): the bar when stderr is a terminal, else epoch lines;
    ``True``: the bar always; ``False``: neither (a quiet run, e.g. in tests)."""
    if progress is False:
        return "none"
    if progress is True:
        return "bar"
    tty = sys.stderr.isatty() if isatty is None else isatty
    return "bar" if tty else "lines"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class EpochLines:
    """Writes one line per epoch to stderr (looked up at each call, so redirection holds):
    ``member=<id> epoch=<e>/<total> train_loss=.. val_loss=.. val_<monitor>=.. seconds=.. eta=..``.

    ``seconds`` is the epoch's training and validation time; ``eta`` the mean epoch time of
    this process times the epochs left (an upper bound when early stopping ends the run first).
    """

    def __init__(self, member: str, n_epochs: int, monitor: str) -> None:
        self.member, self.n_epochs, self.monitor = member, n_epochs, monitor
        self.seconds: list[float] = []

    def line(self, row: dict) -> str:
        self.seconds.append(float(row["seconds"]))
        eta = sum(self.seconds) / len(self.seconds) * (self.n_epochs - row["epoch"])
        metric = "" if self.monitor == "val_loss" else f" val_{self.monitor}={row[f'val_{self.monitor}']:.4f}"
        return (f"member={self.member} epoch={row['epoch']}/{self.n_epochs} train_loss={row['train_loss']:.4f} "
                f"val_loss={row['val_loss']:.4f}{metric} seconds={row['seconds']:.1f} "
                f"eta={format_duration(eta)}")

    def __call__(self, row: dict) -> None:
        print(self.line(row), file=sys.stderr, flush=True)
