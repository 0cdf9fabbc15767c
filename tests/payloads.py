"""A pickle that runs code when it is unpickled: what a crafted checkpoint, evaluator or weights file would hold.

`plant(path, marker)` writes it (in torch.save's format) to `path`; unpickling it creates `marker`, so a test that
finds no marker after loading knows that nothing ran.
"""

from __future__ import annotations

from pathlib import Path

import torch


class RunsCode:
    """Unpickles into a call of exec(), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def plant(path: Path, marker: Path) -> Path:
    """Replaces `path` (or creates it) with a torch.save file whose unpickling runs code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    torch.save({"model": RunsCode(marker), "state": RunsCode(marker)}, path)
    return path
