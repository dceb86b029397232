"""Argument parsing shared by the experiment CLIs: one-line errors, int lists, task weights."""
from __future__ import annotations

import argparse

__all__ = ["OneLineParser", "int_tuple", "task_weights"]


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line on stderr (exit status 2), without the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_tuple(text: str) -> tuple[int, ...]:
    """ "48,64" (or "48x64") -> (48, 64)."""
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def task_weights(text: str) -> dict[str, float]:
    """ "semantic=1,depth=0.5" -> {"semantic": 1.0, "depth": 0.5} (any name=number list, e.g. --lr-scale)."""
    out = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected name=number[,name=number...], got {text!r}") from None
    return out
