"""argparse ``type=`` functions for the command line's numbers.

A size of 0, a negative count or a NaN learning rate is refused where it is
typed, by argparse (usage line, exit status 2), instead of dividing by zero
or training on garbage later. ``float("nan")`` and ``float("inf")`` parse, so
every float type here also refuses them.
"""
import argparse
import math

INT32 = (-2 ** 31, 2 ** 31 - 1)
INT64 = (-2 ** 63, 2 ** 63 - 1)


def _int(text, low, high, what):
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError("%r is not a whole number" % (text,)) from None
    if value < low:
        raise argparse.ArgumentTypeError("%d: must be %s" % (value, what))
    if high is not None and value > high:
        raise argparse.ArgumentTypeError("%d: must be at most %d" % (value, high))
    return value


def _float(text, low, low_open, high, what):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError("%r is not a number" % (text,)) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("%s: must be a finite number" % text)
    if value < low or (low_open and value == low) or (high is not None and value > high):
        raise argparse.ArgumentTypeError("%s: must be %s" % (text, what))
    return value


def positive_int(text):
    """1, 2, ... (sizes, iterations, counts, batch sizes)."""
    return _int(text, 1, INT32[1], "at least 1")


def nonneg_int(text):
    """0, 1, ... (0 meaning none / all where the option says so)."""
    return _int(text, 0, INT32[1], "0 or more")


def int32(text):
    """Any int32 (protobuf int32 fields such as NetState level)."""
    return _int(text, INT32[0], INT32[1], "at least %d" % INT32[0])


def seed(text):
    """A random seed NumPy takes: 0 ... 2**63 - 1."""
    return _int(text, 0, INT64[1], "0 or more")


def positive_float(text):
    """A finite number > 0 (epochs, learning rates)."""
    return _float(text, 0.0, True, None, "greater than 0")


def nonneg_float(text):
    """A finite number >= 0 (intervals where 0 turns the thing off)."""
    return _float(text, 0.0, False, None, "0 or more")


def percent(text):
    """A finite number from 0 to 100."""
    return _float(text, 0.0, False, 100.0, "from 0 to 100")
