"""The Lua scripts of the Redis records: one file each in ``lua/``, read once per process.

A script's file says, in its opening comment, what its ``KEYS`` and ``ARGV`` are and what it
returns. Scripts share a few fragments, named with ``$``: ``$NOW_MS`` (Redis's own clock in
milliseconds, so that leases written by workers and read by the sweeper compare on one clock),
``$CURRENT`` (return 0 unless the record runs under attempt ``ARGV[1]``), ``$FINISHED`` (a
condition on a status ``st``: the job has finished), ``$KEEP`` and ``$FORGET`` (the byte cap
of :mod:`.redis_cap`), ``$CALLBACK_DUE`` (the outbox's write, in the script of a job's final
write), ``$KEY_PREFIX`` and ``$CALLBACKS_KEY``.
"""

from __future__ import annotations

import functools
from importlib import resources
from string import Template

from schemas.jobs import JobStatus
from workers.records.redis_cap import CAP_NAMES
from workers.records.redis_keys import CALLBACKS_KEY, KEY_PREFIX

__all__ = ["script_names", "script_source"]

_FRAGMENTS = ("now_ms", "current", "keep", "forget", "callback_due")


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def script_names() -> list[str]:
    """Every script of the records (the fragments they include are not scripts)."""
    files = resources.files(__package__).joinpath("lua").iterdir()
    stems = (f.name.removesuffix(".lua") for f in files if f.name.endswith(".lua"))
    return sorted(stem for stem in stems if stem not in _FRAGMENTS)


@functools.cache
def script_source(name: str) -> str:
    """The Lua source of the script ``name`` (its file's stem), fragments filled in.
    KeyError for a name with no file; ValueError for an unknown ``$`` name in it."""
    try:
        text = _read(name)
    except FileNotFoundError:
        raise KeyError(f"no Lua script {name!r} in workers/records/lua") from None
    finished = " or ".join(f"st == '{s.value}'" for s in JobStatus if s.finished)
    values = {
        "FINISHED": finished,
        "KEY_PREFIX": KEY_PREFIX,
        "CALLBACKS_KEY": CALLBACKS_KEY,
        **CAP_NAMES,
    }
    values |= {
        fragment.upper(): "\n" + Template(_read(fragment)).substitute(values)
        for fragment in _FRAGMENTS
    }
    return Template(text).substitute(values)
