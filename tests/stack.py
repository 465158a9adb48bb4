"""Starting and stopping the real processes of the service for tests: API, workers, ``actq up``.

Each process runs the installed code (``python -m api.cli ...``) with its settings in the
environment, writes its output to a log file, and is stopped with SIGTERM (SIGKILL after a grace
period). Fault-injection tests can kill and restart single processes through ``Stack``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "api.cli", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    workdir: Path
    processes: dict[str, Process] = field(default_factory=dict)

    def add(self, name: str, *args: str) -> Process:
        process = Process(name, list(args), self.env, self.workdir / f"{name}.log")
        self.processes[name] = process.start()
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.log()[-4000:]}" for n, p in self.processes.items())

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


def wait_until(check, timeout: float, what: str, stack: Stack | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    details = stack.logs() if stack else ""
    raise TimeoutError(f"{what} not ready after {timeout}s\n{details}")


def start_up(stack: Stack, port: int, data_dir, model) -> Process:
    """``actq up`` (SQLite, filesystem broker, API and one worker) in ``stack``, serving."""
    process = stack.add(
        "up", "up", "--port", str(port), "--data-dir", str(data_dir), "--model", str(model)
    )
    wait_until(lambda: healthy(stack.url), 60, "actq up", stack)
    return process


def healthy(url: str) -> bool:
    return requests.get(f"{url}/healthz", timeout=2).status_code == 200


def worker_ready(process: Process) -> bool:
    if not process.alive():
        raise RuntimeError(f"{process.name} exited:\n{process.log()[-4000:]}")
    return "ready." in process.log()
