"""The API on a disk that fails, served as ``uvicorn tests.faults.failing_disk:app``.

Once the file that ``CNNVIZ_TEST_FAILING_DISK`` names exists, every file the records write
under the data directory fails with ``OSError(EROFS)``, as on a disk the kernel remounted
read-only; removing the file mends the disk. (The tests run as root, whom ``chmod`` does not
stop, so the fault is injected here, in the API's own process, before it starts.)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from workers.records.sqlite_db import BlobFiles

_MARKER = Path(os.environ["CNNVIZ_TEST_FAILING_DISK"])
_write = BlobFiles.write


def _failing_write(self: BlobFiles, job_id: str, name: str, data: bytes) -> str:
    if _MARKER.exists():
        raise OSError(errno.EROFS, "Read-only file system", str(self.directory))
    return _write(self, job_id, name, data)


BlobFiles.write = _failing_write  # type: ignore[method-assign]

from service.main import app  # noqa: E402 (built once the disk can fail)

__all__ = ["app"]
