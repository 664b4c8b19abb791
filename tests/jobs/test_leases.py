"""Leases in Redis: a running job holds one; a lapsed one is claimed once and sent again.

Against a Redis of each test's own (the lease set is global to a Redis), with leases of a
fraction of a second, so that lapsing is waited for with a deadline, not slept through.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from schemas.jobs import JobStatus
from service.main import create_app
from tests.jobs.client import QUICK, submit
from tests.jobs.conftest import api_settings
from tests.jobs.procs import RedisServer, serve, wait_for
from tests.jobs.test_records import TTL, new_record, progress, result_json
from workers.records import Ending, ShardStart
from workers.records.redis import RedisRecords, lease_member

pytestmark = pytest.mark.redis

LEASE_S = 0.3


@pytest.fixture
def records(fresh_redis: RedisServer) -> Iterator[RedisRecords]:
    backend = RedisRecords(
        fresh_redis.client(), ttl_seconds=TTL, stop_check_interval_s=0, lease_s=LEASE_S
    )
    yield backend
    backend.close()


def created(records: RedisRecords) -> str:
    record, _ = records.create(new_record(), TTL)
    return record.id


def started(records: RedisRecords, holder: str) -> tuple[str, int]:
    """A new job, started by the delivery ``holder``: its id and its first attempt."""
    job_id = created(records)
    attempt = records.start(job_id, holder)
    assert attempt == 1
    return job_id, attempt


def lapsed(records: RedisRecords, member: str) -> bool:
    """Whether ``member``'s lease is past (Redis's clock and ours agree here: one machine)."""
    due = records.leases().get(member)
    return due is not None and due < time.time()


def test_a_running_job_holds_a_lease_that_its_renewals_extend(records: RedisRecords) -> None:
    job_id, attempt = started(records, "task-1")
    first = records.leases()[job_id]
    assert time.time() < first <= time.time() + LEASE_S + 0.05
    time.sleep(0.05)
    assert records.renew(job_id, attempt)
    assert records.leases()[job_id] > first
    assert records.sweep() == []  # nothing lapsed

    assert records.finish(job_id, attempt, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    assert job_id not in records.leases()
    assert not records.renew(job_id, attempt)  # a finished job's lease is not renewed


def test_a_lapsed_job_is_claimed_once_and_its_lost_attempt_is_fenced_off(
    records: RedisRecords, fresh_redis: RedisServer
) -> None:
    job_id, first = started(records, "task-1")
    records.progress(job_id, first, progress(7), None)
    wait_for(lambda: lapsed(records, job_id), 5, "the lease to lapse")

    (claim,) = records.sweep()
    assert (claim.job_id, claim.action, claim.attempt, claim.delivery) == (job_id, "job", 1, 1)
    assert records.sweep() == []  # claimed once: a second sweeper finds nothing
    # A second API process, with records of its own, finds nothing either.
    other = RedisRecords(fresh_redis.client(), ttl_seconds=TTL, lease_s=LEASE_S)
    assert other.sweep() == []

    queued = records.get(job_id)
    assert queued.status == JobStatus.QUEUED
    assert queued.progress is not None and queued.progress.step == 7  # not back to 0
    # The lost attempt, if it still runs somewhere, can no longer write anything.
    assert not records.renew(job_id, first)
    assert records.should_stop(job_id, first)
    assert not records.finish(job_id, first, Ending(JobStatus.SUCCEEDED, result_json()), TTL)

    second = records.start(job_id, f"{job_id}~1")
    assert second == 2
    assert records.finish(job_id, second, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    assert records.get(job_id).status == JobStatus.SUCCEEDED


def test_a_job_sent_again_that_does_not_start_is_claimed_again(records: RedisRecords) -> None:
    job_id, _ = started(records, "task-1")
    wait_for(lambda: lapsed(records, job_id), 5, "the lease to lapse")
    assert [c.delivery for c in records.sweep()] == [1]
    # The send was lost (or waits in a long queue): one lease later it is claimed again.
    wait_for(lambda: lapsed(records, job_id), 5, "the second claim to be due")
    assert [(c.action, c.delivery) for c in records.sweep()] == [("job", 2)]
    assert records.leases()[job_id] > time.time() + 1.5 * LEASE_S  # later: two leases
    assert records.get(job_id).status == JobStatus.QUEUED


def test_a_second_message_does_not_take_a_job_from_a_live_lease(records: RedisRecords) -> None:
    job_id, _ = started(records, "task-1")
    # Another copy of the job's message (a restored original, a second send): not run.
    assert records.start(job_id, "task-2") is None
    assert records.get(job_id).attempts == 1
    # The same message again (Celery gives a killed pool child's message back at once):
    # it takes the job over.
    assert records.start(job_id, "task-1") == 2
    # Once the lease lapsed, any message may take it.
    wait_for(lambda: lapsed(records, job_id), 5, "the lease to lapse")
    assert records.start(job_id, "task-3") == 3


def test_cancel_ends_a_job_whose_lease_lapsed_at_once(records: RedisRecords) -> None:
    live = created(records)
    records.start(live, "task-1")
    after = records.cancel(live)
    assert after.status == JobStatus.RUNNING and after.cancel  # its worker will see the flag

    lost = created(records)
    records.start(lost, "task-2")
    wait_for(lambda: lapsed(records, lost), 5, "the lease to lapse")
    after = records.cancel(lost)
    assert after.status == JobStatus.CANCELLED
    assert after.finished_at is not None
    assert lost not in records.leases()
    records.delete(lost)  # a finished job: it can be deleted at once


def test_a_lapsed_job_asked_to_stop_is_cancelled_by_the_sweep(records: RedisRecords) -> None:
    job_id = created(records)
    records.start(job_id, "task-1")
    records.cancel(job_id)  # while the lease was live: a flag only
    wait_for(lambda: lapsed(records, job_id), 5, "the lease to lapse")
    assert [(c.job_id, c.action) for c in records.sweep()] == [(job_id, "cancelled")]
    assert records.get(job_id).status == JobStatus.CANCELLED


def test_checkpoints_are_kept_for_the_next_attempt_and_fenced(records: RedisRecords) -> None:
    job_id, first = started(records, "task-1")
    records.save_checkpoint(job_id, first, b"state after 25 steps")
    assert records.checkpoint(job_id) == b"state after 25 steps"
    second = records.start(job_id, "task-1")
    assert second == 2
    records.save_checkpoint(job_id, first, b"late write of the lost attempt")
    assert records.checkpoint(job_id) == b"state after 25 steps"
    records.save_checkpoint(job_id, second, b"state after 50 steps")
    assert records.checkpoint(job_id) == b"state after 50 steps"
    records.finish(job_id, second, Ending(JobStatus.SUCCEEDED, result_json()), TTL)
    assert records.checkpoint(job_id) is None  # dropped with the lease when the job ends


def test_shards_hold_leases_keep_their_partials_and_the_last_one_merges(
    records: RedisRecords,
) -> None:
    job_id, attempt = started(records, "dispatch")
    records.plan(job_id, attempt, 2)
    records.release(job_id, attempt)
    assert job_id not in records.leases()

    assert records.start_shard(job_id, attempt, 0, 3, "shard-0") == ShardStart.RUN
    assert records.start_shard(job_id, attempt, 1, 3, "shard-1") == ShardStart.RUN
    # A second copy of shard 0's message while it runs: not run twice.
    assert records.start_shard(job_id, attempt, 0, 3, "shard-0-copy") == ShardStart.LEASED
    assert records.renew(job_id, attempt, 0)
    assert not records.store_partial(job_id, attempt, 0, 2, '{"n": 0}')  # one more to come
    assert records.start_shard(job_id, attempt, 0, 3, "shard-0-late") == ShardStart.DONE

    # Shard 1's worker is lost: its lease lapses and is claimed for sending again.
    member = lease_member(job_id, 1)
    wait_for(lambda: lapsed(records, member), 5, "shard 1's lease to lapse")
    (claim,) = records.sweep()
    assert (claim.action, claim.shard, claim.shards, claim.attempt) == ("shard", 1, 2, attempt)
    assert records.get(job_id).status == JobStatus.RUNNING
    assert not records.renew(job_id, attempt, 1)  # the lost delivery stops if it comes back
    assert records.start_shard(job_id, attempt, 1, 3, "shard-1-again") == ShardStart.RUN
    assert records.store_partial(job_id, attempt, 1, 2, '{"n": 1}')  # the last: merge now
    assert records.partials(job_id) == {0: '{"n": 0}', 1: '{"n": 1}'}
    # The merge holds the job's own lease: lost mid-merge, the job is sent again.
    assert job_id in records.leases()
    wait_for(lambda: lapsed(records, job_id), 5, "the merge's lease to lapse")
    assert [(c.job_id, c.action) for c in records.sweep()] == [(job_id, "job")]
    again = records.start(job_id, f"{job_id}~1")
    assert again == attempt + 1
    assert records.partials(job_id) == {0: '{"n": 0}', 1: '{"n": 1}'}  # kept: only the merge
    # A partial kept again (a late copy of a shard) never triggers a second merge.
    assert not records.store_partial(job_id, again, 1, 2, '{"n": 1}')


def test_partials_outlive_an_attempt_so_done_shards_are_not_run_again(
    records: RedisRecords,
) -> None:
    job_id, first = started(records, "dispatch-1")
    assert records.start_shard(job_id, first, 0, 3, "s0") == ShardStart.RUN
    records.store_partial(job_id, first, 0, 2, '{"n": 0}')
    second = records.start(job_id, "dispatch-1")  # the dispatcher was delivered again
    assert second == 2
    assert records.start_shard(job_id, first, 1, 3, "s1") == ShardStart.STOP  # superseded
    assert records.start_shard(job_id, second, 0, 3, "s0") == ShardStart.DONE
    assert records.start_shard(job_id, second, 1, 3, "s1") == ShardStart.RUN


def test_over_http_a_job_whose_worker_was_lost_is_cancelled_and_deleted_at_once(
    fresh_redis: RedisServer,
) -> None:
    # No sweeper (it would send the job again first) and no worker: the job's only worker
    # is simulated, started and then lost (its lease never renewed).
    with serve(create_app(api_settings(fresh_redis.url, lease_sweep_interval=0))) as api:
        job_id = submit(api, QUICK)["id"]
        worker = RedisRecords(fresh_redis.client(), ttl_seconds=TTL, lease_s=LEASE_S)
        assert worker.start(job_id, "a lost worker") == 1
        assert api.delete(f"/v1/jobs/{job_id}").status_code == 409  # running: not yet
        wait_for(lambda: lapsed(worker, job_id), 5, "the lease to lapse")

        response = api.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 200, response.text  # ended now, not "stops soon" (202)
        assert response.json()["status"] == "cancelled"
        assert api.delete(f"/v1/jobs/{job_id}").status_code == 204
