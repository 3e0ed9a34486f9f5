"""Progress bars that suit a terminal and a CI log alike.

On a terminal tqdm redraws ten times a second; in a log file (CI, ``make test > log``) every
redraw is another line-sized write, so there it reports every 15 seconds instead.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)``, quiet when not ``enabled``, sparse when not on a TTY."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 15.0)
    if not interactive:
        kwargs.setdefault("ncols", 100)
    return tqdm(iterable, disable=not enabled, **kwargs)


__all__ = ["progress"]
