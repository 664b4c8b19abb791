"""The callbacks outbox of :class:`~workers.records.redis.RedisRecords` (the rules are in
:mod:`.outbox`): a sorted set of job ids by due time, the tries and the claim token in each
job's record hash, every step one Lua script on Redis's clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.commands.core import Script

from workers.records.outbox import Due
from workers.records.redis_keys import CALLBACKS_KEY, record_key

__all__ = ["RedisOutbox"]


class RedisOutbox:
    """A :class:`~workers.records.outbox.CallbackOutbox` in Redis, on the records' scripts
    (by name); ``call`` wraps each call (the records turn Redis's errors into
    RecordsUnavailable)."""

    def __init__(self, scripts: dict[str, Script], call: Callable[..., Any]) -> None:
        self._call = call
        self._add = scripts["add_callback"]
        self._claim = scripts["claim_callbacks"]
        self._settle = scripts["settle_callback"]

    def add(self, job_id: str) -> None:
        self._call(self._add, keys=[record_key(job_id), CALLBACKS_KEY], args=[job_id])

    def claim(self, lease_s: float, limit: int) -> list[Due]:
        rows = self._call(self._claim, keys=[CALLBACKS_KEY], args=[int(lease_s * 1000), limit])
        return [Due(_text(job_id), int(tries), int(token)) for job_id, tries, token in rows]

    def settle(self, due: Due, retry_in_s: float | None) -> None:
        retry_ms = -1 if retry_in_s is None else int(retry_in_s * 1000)
        keys = [record_key(due.job_id), CALLBACKS_KEY]
        self._call(self._settle, keys=keys, args=[due.job_id, due.token, retry_ms])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
