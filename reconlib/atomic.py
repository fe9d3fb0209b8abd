"""Every file reconlib writes for others to read (records, dense streams, checkpoints, generated text) is written
here: to a temporary file beside it, then renamed onto it. A reader, or a grid worker sharing the folder, sees the
old file or the whole new one, never half of it; a write that fails leaves nothing behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write(file: Path, writer: Callable[[str], object]) -> None:
    """writer(path) writes the content to `path`, a fresh temporary file (unique, so two writers never share it)."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(dir=file.parent, prefix=file.name, suffix=".part")
    os.close(fd)
    try:
        writer(part)
        os.replace(part, file)
    except BaseException:
        os.unlink(part)
        raise
