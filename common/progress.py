"""Progress bars: one tqdm style (rate and ETA) for every loop in the repository."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             enabled: bool = True, unit: str = "it", initial: int = 0, **kwargs) -> tqdm:
    """A tqdm bar with rate and ETA; silent on non-zero ranks and when ``enabled`` is False."""
    disable = (not enabled) or int(os.environ.get("RANK", "0")) != 0
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable,
                dynamic_ncols=True, mininterval=0.5, file=sys.stderr, **kwargs)
