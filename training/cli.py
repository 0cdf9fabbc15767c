"""What every command line here shares: argument types, closest-name suggestions, a parser that suggests flags."""

from __future__ import annotations

import argparse
import difflib
import tempfile
from pathlib import Path
from typing import NoReturn, Sequence

from training.errors import UserError


class FlagError(UserError, ValueError):
    """A flag whose value cannot work (a folder that cannot be written, a size beyond what the data allows)."""


def closest(name: str, options: Sequence[str]) -> str:
    """The option that looks most like `name`, for "did you mean ...?" errors."""
    matches = difflib.get_close_matches(str(name).lower(), list(options), n=1, cutoff=0.0)
    return matches[0] if matches else options[0]


def check_writable(path: str | Path, flag: str) -> Path:
    """Raises `FlagError` unless a file can be written at `path` (a folder, or the nearest existing folder above it
    when it does not exist yet); returns that folder. Creates nothing."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FlagError(f"{flag} {path}: {existing} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise FlagError(
            f"{flag} {path}: cannot write in {existing} ({error.strerror}); choose a folder you can write to"
        ) from None
    return existing


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
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
    if not value > 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number or 'none', got {text}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `error: ...` and exit status 1 like every other error of the
    project (argparse's own print the whole usage first), and whose error for a misspelt flag names the closest flag.
    """

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            known = [flag for action in self._actions for flag in action.option_strings]
            for word in message.split(":", 1)[1].split():
                if word.startswith("--"):
                    close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                    if close:
                        message += f" (did you mean {close[0]}?)"
                    break
        self.exit(1, f"error: {message} (see --help)\n")
