"""Progress bars for long commands (tqdm), shown only when stderr is a terminal.

One helper so every command draws the same way: ``bar(total, "starting")``
returns a tqdm bar that is silent (``disable=None``: tqdm's own "not a tty"
test) when output goes to a file or a pipe, so logs and tests see nothing.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: float | None, desc: str, unit: str = "it", *, leave: bool = False,
        bar_format: str | None = None) -> tqdm:
    """A tqdm bar on stderr, drawn only on a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr, leave=leave,
                dynamic_ncols=True, smoothing=0.1, bar_format=bar_format)


# A bar of seconds with a known end (a pod's transition): no rate, which means nothing there.
SECONDS = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s"
