"""Process-wide settings that are not part of a daemon or training config.

The real recordings live outside the repository. Tests, benchmarks and the demo find them through
:func:`data_dir`, which reads ``RTSLEEP_DATA`` and defaults to ``../shared/data`` next to the
project root.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "RTSLEEP_DATA"


def data_dir() -> Path:
    """Folder with the shared real recordings (``$RTSLEEP_DATA`` or ``<project>/../shared/data``).

    The path is returned whether or not it exists; callers decide whether a missing folder is an
    error (it is under CI) or a reason to fetch data.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (PROJECT_ROOT / ".." / "shared" / "data").resolve()
