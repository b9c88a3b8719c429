"""argparse types for the benches' numeric options: a bad value is a usage error naming its option.

argparse calls an option's ``type`` on every value given (on each one with ``nargs``). The types
here parse the number and check its range; the :class:`argparse.ArgumentTypeError` they raise
becomes ``error: argument --NAME: MESSAGE`` on stderr and exit status 2 before the bench sets
anything up (trains a model, starts a server), instead of a traceback or an ``inf`` after it.
NaN and infinities are refused: no bench measures anything with them.

Usage::

    parser.add_argument("--repeats", type=COUNT, default=3)
    parser.add_argument("--seconds", type=POSITIVE, default=10.0)
    parser.add_argument("--vocab", type=bounded(int, at_least=2, why="blank and one token"),
                        nargs="+", default=[500])
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded(kind: type[int] | type[float], *, at_least: float | None = None,
            above: float | None = None, at_most: float | None = None,
            why: str = "") -> Callable[[str], int | float]:
    """An argparse ``type``: ``kind(text)``, finite and within the given bounds.

    Args:
        kind: ``int`` or ``float``.
        at_least: smallest value allowed (inclusive).
        above: exclusive lower bound.
        at_most: largest value allowed (inclusive).
        why: reason shown after a refused value's range, e.g. ``"a bounded benchmark"``.

    Returns:
        A function from the option's text to the number; it raises
        :class:`argparse.ArgumentTypeError` for a value that is not a finite ``kind`` or out of
        range.
    """
    if kind not in (int, float):
        raise TypeError(f"bounded: kind must be int or float, got {kind!r}")
    limits = [f"at least {at_least:g}" if at_least is not None else "",
              f"above {above:g}" if above is not None else "",
              f"at most {at_most:g}" if at_most is not None else ""]
    wanted = " and ".join(limit for limit in limits if limit) or "finite"
    reason = f" ({why})" if why else ""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        inside = ((at_least is None or value >= at_least) and (above is None or value > above)
                  and (at_most is None or value <= at_most))
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {wanted}{reason}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} {wanted}"
    return parse


#: Counts that must do something: repeats, batch sizes, utterances, thread counts.
COUNT = bounded(int, at_least=1)
#: Counts where 0 means none or the default (warm-up steps, search probes, "0: torch's threads").
NON_NEGATIVE_INT = bounded(int, at_least=0)
#: Durations and rates: seconds of audio, tokens per second.
POSITIVE = bounded(float, above=0)
#: Amounts where 0 means none or the default (a time budget, "0: the recipe's max_duration").
NON_NEGATIVE = bounded(float, at_least=0)
#: Any finite number (biases).
FINITE = bounded(float)
