"""Benchmark: how long a job takes to come back after its whole worker is lost.

A real Redis, the API (Celery transport) over HTTP and real workers, all started here. An
optimization job runs on worker 1; at ``--kill-at`` of its steps the worker's whole process
group is killed (SIGKILL: a machine lost, nothing acknowledged, nothing renewed) and worker 2
is started. Printed, side by side from one run:

* seconds from the kill to the job running again (its next attempt), and to its result;
* the step the job resumed from (its last checkpoint) against the step it was killed at;
* the run time of the same job uninterrupted, on worker 2, for the cost of the loss.

The lease and sweep settings are the defaults unless given (``--lease-timeout``,
``--lease-interval``, ``--sweep``); Celery's visibility timeout stays at its default of an
hour, so whatever comes back within it came back through the lease::

    .venv/bin/python bench/recovery.py [--steps 800] [--kill-at 0.5]
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.main import create_app
from service.settings import Settings
from tests.jobs.client import job, submit, wait_job
from tests.jobs.procs import CeleryWorker, RedisServer, serve, wait_for
from workers.config import WorkerSettings


def main() -> None:
    defaults = WorkerSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of the steps")
    parser.add_argument("--lease-timeout", type=float, default=defaults.job_lease_timeout)
    parser.add_argument("--lease-interval", type=float, default=defaults.job_lease_interval)
    parser.add_argument("--checkpoint-steps", type=int, default=defaults.job_checkpoint_steps)
    parser.add_argument(
        "--checkpoint-interval", type=float, default=defaults.job_checkpoint_interval
    )
    parser.add_argument("--sweep", type=float, default=Settings().lease_sweep_interval)
    args = parser.parse_args()

    body = {"layer": "block3.relu", "channels": [0, 1, 2, 3], "steps": args.steps}
    env = {
        "CNNVIZ_JOB_LEASE_TIMEOUT": str(args.lease_timeout),
        "CNNVIZ_JOB_LEASE_INTERVAL": str(args.lease_interval),
        "CNNVIZ_JOB_CHECKPOINT_STEPS": str(args.checkpoint_steps),
        "CNNVIZ_JOB_CHECKPOINT_INTERVAL": str(args.checkpoint_interval),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir).start()
        first = CeleryWorker(redis_server.url, workdir, env).start()
        second = CeleryWorker(redis_server.url, workdir, env)
        try:
            settings = Settings(
                redis_url=redis_server.url,
                models_file=None,
                lease_sweep_interval=args.sweep,
                job_progress_interval=0.1,
            )
            with serve(create_app(settings)) as api:
                job_id = submit(api, body)["id"]
                kill_step = int(args.steps * args.kill_at)

                def reached() -> bool:
                    progress = job(api, job_id).get("progress") or {}
                    return int(progress.get("step", 0)) >= kill_step

                wait_for(reached, 600, f"step {kill_step}", interval=0.02)
                killed_step = job(api, job_id)["progress"]["step"]
                first.kill()
                killed_at = time.monotonic()
                second.start()
                started_s = time.monotonic() - killed_at

                def again() -> dict[str, Any] | None:
                    record = job(api, job_id)
                    return record if record["attempts"] >= 2 else None

                wait_for(again, 3600, "the next attempt", interval=0.05)
                back_s = time.monotonic() - killed_at

                done = wait_job(api, job_id, timeout=3600)
                done_s = time.monotonic() - killed_at
                assert done["status"] == "succeeded", done["error"]
                resumed = re.findall(r"resuming from step (\d+)", second.log(tail=None))
                resumed_step = int(resumed[-1]) if resumed else 0

                started = time.monotonic()
                wait_job(api, submit(api, body)["id"], timeout=3600)
                whole_s = time.monotonic() - started
        finally:
            first.stop()
            second.stop()
            redis_server.stop()

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}; job: {body}")
    print(
        f"lease {args.lease_timeout:g} s renewed every {args.lease_interval:g} s, sweep every "
        f"{args.sweep:g} s, checkpoint every {args.checkpoint_steps} steps and at most every "
        f"{args.checkpoint_interval:g} s; "
        "Celery visibility timeout: the default (3900 s)"
    )
    print(
        f"killed at step {killed_step}; the next attempt resumed at step {resumed_step} "
        f"({killed_step - resumed_step} steps done again)"
    )
    print(f"new worker up after the kill:        {started_s:6.1f} s")
    print(f"job running again (attempt 2) after: {back_s:6.1f} s")
    print(f"job succeeded after:                 {done_s:6.1f} s")
    print(f"the whole job uninterrupted:         {whole_s:6.1f} s")
    print(f"ratio, recovery to result ÷ uninterrupted job: {done_s / whole_s:.2f}")


if __name__ == "__main__":
    main()
