"""A progress bar that Beam DoFns can update when the runner executes them in this process."""

from __future__ import annotations

import uuid
from typing import Any


class LocalProgress:
    """Hands a progress bar (anything with ``update(n)``) to DoFns, which Beam pickles.

    A pickled copy keeps only a key and finds the bar again in the process that made it; in any
    other process (a worker of a multi-process runner, Dataflow) it does nothing. So a local run
    shows live progress and a remote one is not slowed or broken by it.
    """

    _bars: dict[str, Any] = {}

    def __init__(self, bar: Any):
        self.key = uuid.uuid4().hex
        LocalProgress._bars[self.key] = bar

    def update(self, n: int = 1) -> None:
        bar = LocalProgress._bars.get(self.key)
        if bar is not None:
            bar.update(n)

    def close(self) -> None:
        bar = LocalProgress._bars.pop(self.key, None)
        if bar is not None:
            bar.close()

    def __getstate__(self) -> dict:
        return {"key": self.key}

    def __setstate__(self, state: dict) -> None:
        self.key = state["key"]
