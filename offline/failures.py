"""One bad recording of many: logged and listed, not fatal.

Commands that read a whole folder or store (``evaluate``) pass a ``failed`` list to the
readers: a recording that cannot be read is logged as one line naming it, appended as
``(source, message)`` and skipped, and the command reports the list and exits 1. Without a
list (training, which needs every recording) the error is raised as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rtsleep.data.errors import DataError

log = logging.getLogger(__name__)

Failed = list[tuple[str, str]]
"""``(source, one-line message)`` per recording that could not be read."""


def skip_failed(source: Path, err: Exception, failed: Failed | None) -> None:
    """Re-raise ``err`` when there is no ``failed`` list; else log it as one line naming
    ``source`` (reader bugs and unexpected formats too) and append ``(source, message)``."""
    if failed is None:
        raise err
    msg = str(err) if isinstance(err, DataError) else f"{source}: {type(err).__name__}: {err}"
    log.debug("error on %s", source, exc_info=err)
    log.error("%s", msg)
    failed.append((str(source), msg))


def none_readable(folder: Path, what: str, failed: Failed) -> DataError:
    """The error for a folder none of whose ``what`` (e.g. "Apnea-ECG nights") could be read."""
    return DataError(folder, f"none of its {what} could be read ({len(failed)} failed; "
                             f"first: {failed[0][1]})")
