"""One line per mistake: the base class of the errors a user can fix, and the wrapper every command line runs in.

A `UserError`'s message says in one line what was wrong and what to do. `one_line_errors` prints such errors (and
the operating system's: a full disk, a folder without write permission) as `error: message` on stderr and exits
with status 1, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """An error the user can fix (bad input, a bad flag, an unreachable server); the message is one line."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (a library's message may span several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turns user errors, label errors, OS errors and running out of memory into `error: ...` and exit status 1."""
    # Imported here: the demo shipped in an exported folder imports this module where `pipeline` is not a package.
    from pipeline.vocabulary import LabelError

    try:
        yield
    except (UserError, LabelError, OSError) as error:
        raise SystemExit(f"error: {one_line(error)}") from None
    except (MemoryError, RuntimeError) as error:
        torch = sys.modules.get("torch")
        if isinstance(error, RuntimeError) and not (torch and isinstance(error, torch.OutOfMemoryError)):
            raise
        raise SystemExit(
            f"error: out of memory ({one_line(error)[:200]}); use a smaller batch size, resolution or model"
        ) from None
