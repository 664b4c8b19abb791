"""Finished jobs' results on disk, for the in-memory records once they pass their byte cap.

One folder per job under the results directory, named by a digest of the job id (so no id
can name a path outside it), holding each kept part as one file. A job's folder is written
under a temporary name and renamed into place, so a reader sees all of a job's parts or
none. Files are read back on demand; nothing of a spilled job stays in memory but its record.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ResultFiles"]


class ResultFiles:
    """Parts (``result``, ``preview``, ``arrays``) of finished jobs as files in a directory.

    ``directory`` None: a new temporary directory, removed by :meth:`close` (the records it
    backs live as long as the process). A directory that is given is created if missing and
    never removed; its job folders are removed with their jobs.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._owned = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="cnnviz-results-"))
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def _folder(self, job_id: str) -> Path:
        return self.directory / hashlib.sha256(job_id.encode()).hexdigest()[:32]

    def write(self, job_id: str, parts: Mapping[str, bytes]) -> None:
        """Store ``parts`` (name: bytes) of ``job_id``, replacing what it had; raises OSError
        (disk full, no permission) with nothing left behind."""
        folder = self._folder(job_id)
        staging = Path(tempfile.mkdtemp(dir=self.directory, prefix=".staging-"))
        try:
            for name, data in parts.items():
                with open(staging / name, "wb") as file:
                    file.write(data)
            self.remove(job_id)
            os.rename(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def read(self, job_id: str, part: str) -> bytes | None:
        """The bytes of one part, or None when the job had no such part (or is gone)."""
        try:
            return (self._folder(job_id) / part).read_bytes()
        except FileNotFoundError:
            return None

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self._folder(job_id), ignore_errors=True)

    def bytes_on_disk(self) -> int:
        """What the spilled parts take in all (for metrics and tests)."""
        total = 0
        for path in self.directory.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file():
                    total += path.stat().st_size
        return total

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)
