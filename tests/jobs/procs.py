"""Real processes for the job tests: a Redis server, Celery workers, and the API over HTTP.

Every start waits for a condition with a deadline (a PING, a worker's reply, the server's
``started`` flag) rather than sleeping, and every ``stop`` leaves no process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import redis
import uvicorn
from celery import Celery
from fastapi import FastAPI

from tests.api.conftest import KEEP_ALIVE

ROOT = Path(__file__).resolve().parents[2]
# The callback key of the test APIs and workers; callbacks go to 127.0.0.1 only.
CALLBACK_SECRET = "test-callback-secret"


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """``command`` started from the repository in a process group of its own, its output
    appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen[bytes] | None, signum: int, grace: float) -> None:
    """Stop ``process``'s whole group: ``signum``, up to ``grace`` seconds for it to exit,
    then SIGKILL for whatever of the group is left."""
    if process is None:
        return
    if process.poll() is None:
        os.killpg(process.pid, signum)
        with suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


class RedisServer:
    """A throwaway ``redis-server`` on a free port; stoppable, and restartable on that port.

    ``persistent``: an append-only file, fsynced at every write, as in production (compose):
    what was in Redis is still there after a restart.
    """

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-redis installs it)")
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.2).ping())
        except redis.RedisError:
            return False

    def start(self) -> RedisServer:
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115 (closed below)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.workdir),
                "--appendfilename",
                f"redis-{self.port}.aof",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self.ping, 10, f"redis-server on port {self.port}")
        return self

    def send(self, signum: int) -> None:
        """Send ``signum`` to the server: SIGSTOP pauses it (it answers nothing, connections
        stay open), SIGCONT resumes it, SIGKILL crashes it (``start`` brings it back)."""
        assert self.process is not None
        self.process.send_signal(signum)
        if signum == signal.SIGKILL:
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server cannot stop
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


class CeleryWorker:
    """``celery -A workers.app worker -Q gpu --pool prefork --concurrency 1`` in its own
    session (so SIGKILL reaches the pool child too), logging to a file."""

    _count = 0

    def __init__(self, redis_url: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        CeleryWorker._count += 1
        self.name = f"test{CeleryWorker._count}-{os.getpid()}@localhost"
        self.redis_url = redis_url
        self.log_path = workdir / f"worker-{CeleryWorker._count}.log"
        self.env = {
            **os.environ,
            "CNNVIZ_REDIS_URL": redis_url,
            # Two shared cores: one torch thread per child keeps timings steady.
            "CNNVIZ_WORKER_TORCH_THREADS": "1",
            "CNNVIZ_JOB_PROGRESS_INTERVAL": "0.1",
            "CNNVIZ_JOB_PREVIEW_INTERVAL": "0.2",
            "CNNVIZ_CALLBACK_SECRET": CALLBACK_SECRET,
            # Stopping a test worker: cancel at once, no soft-shutdown grace.
            "CNNVIZ_WORKER_SOFT_SHUTDOWN_TIMEOUT": "0",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> CeleryWorker:
        self.process = spawn(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-Q",
                "gpu",
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--hostname",
                self.name,
                "--without-gossip",
                "--without-mingle",
            ],
            self.env,
            self.log_path,
        )
        client = Celery(broker=self.redis_url, set_as_current=False)
        try:

            def answers() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise AssertionError(f"worker exited at start:\n{self.log()}")
                return bool(client.control.ping(destination=[self.name], timeout=0.3))

            wait_for(answers, timeout, f"worker {self.name}", interval=0.1)
        finally:
            client.close()
        return self

    def log(self, tail: int | None = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pool_children(self) -> list[int]:
        """Pids of the worker's pool children."""
        assert self.process is not None
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def kill(self) -> None:
        """SIGKILL the worker and its pool child at once: a machine lost mid-job."""
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        # Cold shutdown (SIGQUIT): no waiting for a running job; the group goes after.
        stop_group(self.process, signal.SIGQUIT, 15)
        self.process = None


@contextmanager
def serve(app: FastAPI) -> Iterator[httpx.Client]:
    """Run ``app`` under uvicorn in a thread (lifespan included); an HTTP client for it."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the API server")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=30, limits=KEEP_ALIVE) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


class ApiProcess:
    """``uvicorn service.main:app`` as a process of its own (its own session, so a signal
    reaches every worker process), on a free port of 127.0.0.1, logging to a file; it can be
    killed or stopped and started again on the same port and data directory.

    ``app``: the import string uvicorn serves, another module's to change the API's process
    before it starts (a fault to inject)."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        app: str = "service.main:app",
    ) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"api-{self.port}.log"
        self.workers = workers
        self.env = {
            **os.environ,
            "CNNVIZ_TORCH_THREADS": "1",
            "CNNVIZ_JOB_PROGRESS_INTERVAL": "0.1",
            "CNNVIZ_JOB_PREVIEW_INTERVAL": "0.2",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> ApiProcess:
        """Start and wait until it answers: its imports take 13 s of CPU, and over a minute
        on two shared cores under load (two worker processes at once, more)."""
        command = [sys.executable, "-m", "uvicorn", self.app]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", str(self.workers), "--log-level", "info"]
        self.process = spawn(command, self.env, self.log_path)

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the API exited at start:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout, f"the API on port {self.port}", interval=0.1)
        return self

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def log(self, tail: int | None = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def send(self, signum: int, timeout: float = 30) -> int:
        """Send ``signum`` to the whole process group; the exit status."""
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def stop(self) -> None:
        stop_group(self.process, signal.SIGTERM, 30)
        self.process = None
