"""The callbacks outbox and the API's courier: a due callback is kept in the records, claimed
by one process at a time, fenced, and delivered once, signed, with bounded retries.

The same specification for the records in Redis, in SQLite and in memory. "Two processes" are
two backend objects on one store (one Redis, one data directory), as two API processes are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.jobs import JobRecord, JobStatus
from service.jobs.callbacks import CallbackPolicy
from service.jobs.courier import CallbackCourier
from tests.jobs.procs import CALLBACK_SECRET, RedisServer, wait_for
from tests.jobs.receiver import Receiver, receiver
from tests.jobs.test_callbacks import verify
from tests.jobs.test_records import TTL, new_record
from workers import run
from workers.records import Ending, JobRecords
from workers.records.base import ShardStart
from workers.records.memory import MemoryRecords
from workers.records.outbox import Due
from workers.records.redis import RedisRecords
from workers.records.sqlite import SqliteRecords

Open = Callable[[], Any]
"""Opens the store once more, as another process (or the same one after a restart) would."""


@pytest.fixture(params=["redis", "sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    opened: list[Any] = []
    if request.param == "memory":
        shared = MemoryRecords(TTL)  # one process: its one object

        def open_store() -> Any:
            return shared
    elif request.param == "sqlite":

        def open_store() -> Any:
            opened.append(SqliteRecords(tmp_path / "data", TTL))
            return opened[-1]
    else:
        server: RedisServer = request.getfixturevalue("shared_redis")

        def open_store() -> Any:
            return RedisRecords(server.client(), ttl_seconds=TTL)

    yield open_store
    for records in opened:
        records.close()


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with receiver() as state:
        yield state


def finished(records: JobRecords, callback_url: str | None) -> str:
    """A job that ended, with its callback due; its id."""
    record: JobRecord = new_record().model_copy(update={"callback_url": callback_url})
    records.create(record, TTL)
    attempt = records.start(record.id)
    assert attempt is not None
    assert records.finish(record.id, attempt, Ending(JobStatus.CANCELLED), TTL)
    records.callbacks.add(record.id)
    return record.id


def claim_mine(records: JobRecords, job_id: str, lease_s: float = 60) -> list[Due]:
    """The claims of ``job_id`` among what is due (the Redis store is shared by tests)."""
    return [due for due in records.callbacks.claim(lease_s, 1000) if due.job_id == job_id]


def test_a_due_callback_is_claimed_by_one_process_and_added_once(store: Open) -> None:
    first, second = store(), store()
    job_id = finished(first, "http://127.0.0.1:9/hook")
    first.callbacks.add(job_id)  # the job ending again (a redelivery): no second entry
    (due,) = claim_mine(first, job_id)
    assert due.tries == 0
    assert claim_mine(second, job_id) == []  # leased to the first
    first.callbacks.settle(due, None)
    second.callbacks.add(job_id)  # delivered: never due again
    assert claim_mine(second, job_id, lease_s=0) == []


def test_a_lapsed_claim_goes_to_another_process_and_its_settle_is_fenced(store: Open) -> None:
    first, second = store(), store()
    job_id = finished(first, "http://127.0.0.1:9/hook")
    (lost,) = claim_mine(first, job_id, lease_s=0.2)  # its process dies mid-try
    (taken,) = wait_for(lambda: claim_mine(second, job_id), 10, "the lease to lapse")
    assert taken.token > lost.token
    first.callbacks.settle(lost, None)  # a late word from the lost claim changes nothing
    second.callbacks.settle(taken, 0)  # failed: due again at once, one try counted
    (again,) = claim_mine(first, job_id)
    assert again.tries == 1


def test_a_due_callback_outlives_its_process(store: Open) -> None:
    before = store()
    if isinstance(before, MemoryRecords):
        pytest.skip("records in memory live as long as their process")
    job_id = finished(before, "http://127.0.0.1:9/hook")
    if isinstance(before, SqliteRecords):
        before.close()  # the API stops; it starts again on the same data directory
    assert [due.job_id for due in claim_mine(store(), job_id)] == [job_id]


def courier(records: JobRecords, attempts: int = 4) -> CallbackCourier:
    policy = CallbackPolicy(CALLBACK_SECRET, attempts=attempts, backoff_s=0.01)
    return CallbackCourier(records, policy, interval_s=0.05, lease_s=30)


def deliver_until(couriers: list[CallbackCourier], done: Callable[[], bool]) -> None:
    """Run rounds of every courier until ``done``."""

    def round_done() -> bool:
        for each in couriers:
            each.deliver_due()
        return done()

    wait_for(round_done, 30, "the callbacks")


def test_two_couriers_deliver_each_callback_once_signed(store: Open, hooks: Receiver) -> None:
    hooks.delays["/slow"] = 0.3
    first, second = store(), store()
    jobs = [finished(first, hooks.url + "/slow") for _ in range(6)]
    couriers = [courier(first), courier(second)]
    try:
        deliver_until(couriers, lambda: hooks.answered.count("/slow") >= len(jobs))
    finally:
        for each in couriers:
            each.close()  # lets the tries under way end
    delivered = [verify(d)["id"] for d in hooks.to("/slow")]
    assert sorted(delivered) == sorted(jobs)  # each once, whichever process sent it
    assert all(verify(d)["status"] == "cancelled" for d in hooks.to("/slow"))


def test_retries_are_bounded_and_a_refusal_is_final(store: Open, hooks: Receiver) -> None:
    hooks.answers.update({"/down": [503, 503, 200], "/gone": [410], "/never": [500]})
    records = store()
    for path in ("/down", "/gone", "/never"):
        finished(records, hooks.url + path)
    sender = courier(records, attempts=4)
    try:
        deliver_until([sender], lambda: len(hooks.to("/never")) == 4 and hooks.to("/gone"))
        deliver_until([sender], lambda: len(hooks.to("/down")) == 3)
        # The last backoff (0.04 s) five times over: a fifth try would have been made.
        time.sleep(0.2)
        sender.deliver_due()
    finally:
        sender.close()
    assert [len(hooks.to(p)) for p in ("/down", "/gone", "/never")] == [3, 1, 4]


def test_a_job_gone_before_its_callback_is_dropped(store: Open, hooks: Receiver) -> None:
    records = store()
    job_id = finished(records, hooks.url + "/deleted")
    records.delete(job_id)
    sender = courier(records)
    try:
        for future in sender.deliver_due():
            future.result()
    finally:
        sender.close()
    assert hooks.to("/deleted") == []
    assert claim_mine(records, job_id, lease_s=0) == []


class Killed(BaseException):
    """The process dies here: nothing after this point runs (``os._exit``, in-process)."""


def _die(*_: object) -> None:
    raise Killed


def _end_then_die(records: JobRecords, record: JobRecord, how: str) -> JobStatus:
    """End the job ``how``, the process lost right after the final write; its status."""
    if how == "cancelled":  # queued: the cancel itself is the final write
        records.cancel(record.id)
        return JobStatus.CANCELLED
    attempt = records.start(record.id)
    assert attempt is not None
    if how == "lost":  # its shard delivered once too often: the job fails as lost
        if isinstance(records, RedisRecords):
            records.plan(record.id, attempt, 2)
        assert records.start_shard(record.id, attempt, 0, 1) == ShardStart.RUN
        assert records.start_shard(record.id, attempt, 0, 1) == ShardStart.STOP
        return JobStatus.FAILED
    failed = {run.FAILED: {"status": "failed", "error": None}}
    with pytest.raises(Killed):  # run.ended, the first step after the write, never runs
        run.conclude(record.task(TTL), attempt, [failed], None, records, run.Limits())  # type: ignore[arg-type]
    return JobStatus.FAILED


@pytest.mark.parametrize("how", ["finished", "cancelled", "lost"])
def test_a_process_lost_right_after_the_final_write_still_calls_back_once(
    store: Open, hooks: Receiver, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(run, "ended", _die)
    before = store()
    record = new_record().model_copy(update={"callback_url": f"{hooks.url}/{how}"})
    before.create(record, TTL)
    status = _end_then_die(before, record, how)
    assert before.get(record.id).status == status  # the final write was made
    if isinstance(before, SqliteRecords):
        before.close()  # the process is gone; the API starts again on its data directory
    sender = courier(store())
    try:
        deliver_until([sender], lambda: bool(hooks.to(f"/{how}")))
        time.sleep(0.2)  # a second delivery would be due by now
        for future in sender.deliver_due():
            future.result()
    finally:
        sender.close()
    (delivery,) = hooks.to(f"/{how}")  # once, signed, with the status written
    assert verify(delivery) | {"id": record.id, "status": status.value} == verify(delivery)
