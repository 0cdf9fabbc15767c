"""What every command line here shares: argument types, closest-name suggestions, a parser that suggests flags."""

from __future__ import annotations

import argparse
import difflib
from typing import Sequence


def closest(name: str, options: Sequence[str]) -> str:
    """The option that looks most like `name`, for "did you mean ...?" errors."""
    matches = difflib.get_close_matches(str(name).lower(), list(options), n=1, cutoff=0.0)
    return matches[0] if matches else options[0]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def fraction(text: str) -> float:
    """A share strictly between 0 and 1."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def probability(text: str) -> float:
    """A probability in [0, 1)."""
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def positive_float_or_none(text: str) -> float | None:
    """A positive number, or "none" to turn the setting off."""
    if text.lower() == "none":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number or 'none', got {text}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose error for a misspelt flag names the closest real one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = [flag for action in self._actions for flag in action.option_strings]
            for word in message.split(":", 1)[1].split():
                if word.startswith("--"):
                    close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                    if close:
                        message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)
