"""Progress bars for steps that can take more than a second.

One :class:`Progress` per run. ``with progress.task("near duplicates", total=n) as advance:``
yields a callable that moves the bar; when disabled (the Python API's default, or the CLI
writing to a pipe) the callable does nothing and costs nothing.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator


class Progress:
    """rich progress bars on stderr, or nothing."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bars = RichProgress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.__exit__(*exc)
            self._bars = None

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        if self._bars is None:
            yield _noop
            return
        task_id = self._bars.add_task(description, total=total)
        try:
            yield lambda k=1: self._bars.advance(task_id, k)
        finally:
            self._bars.remove_task(task_id)


def _noop(k: int = 1) -> None:
    return None
