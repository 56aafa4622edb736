"""Worker processes of ``aimv2 bench``: subjects that need another BLAS setup than this
process (torch must never share a process with an MLX-preloaded OpenBLAS) or a process
of their own run in ``python -m aimv2.bench --worker``, one JSON request per line.

Example:
    >>> from aimv2.blas import without_preload
    >>> from aimv2.bench.subject import Desc
    >>> d = Desc("matmul", "torch", "matmul", "matmul (torch)", {}, 1, device="cpu",
    ...          matmul_size=64, tune_alloc=False)
    >>> worker = Worker(without_preload())
    >>> subject = Remote(d, worker)
    >>> subject.prepare()["flops"], subject.run()["seconds"] > 0
    (524288, True)
    >>> worker.close()
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from .subject import Desc, Local, Skip

__all__ = ["Worker", "Remote", "worker_main"]


class Worker:
    """``python -m aimv2.bench --worker`` in its own environment (an LD_PRELOAD or none)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aimv2.bench", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.count = 0

    def add(self, desc: Desc) -> int:
        """Send ``desc`` to the worker; the key that names it in later requests."""
        self.count += 1
        self.ask({"op": "add", "key": self.count, "desc": desc.to_json()})
        return self.count

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One request, one reply; a skip (or a worker that ended) raises :class:`Skip`."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise Skip(f"its worker process ended (exit status {self.proc.poll()})")
        reply = json.loads(line)
        if "skip" in reply:
            raise Skip(reply["skip"])
        return reply

    def close(self) -> None:
        """Ask the worker to quit (kill it if it does not within 30 s)."""
        if self.proc.poll() is not None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class Remote:
    """A subject living in a :class:`Worker`; the same verbs as :class:`~.subject.Local`."""

    def __init__(self, desc: Desc, worker: Worker) -> None:
        self.desc, self.worker, self.key = desc, worker, worker.add(desc)

    def prepare(self) -> dict[str, Any]:
        """Build and warm up the subject in the worker; its info."""
        return self.worker.ask({"op": "prepare", "key": self.key})

    def run(self) -> dict[str, float]:
        """Time one round in the worker."""
        return self.worker.ask({"op": "run", "key": self.key})

    def close(self) -> None:
        """The worker closes with the run."""


def worker_main() -> int:
    """The worker loop: one JSON request per stdin line, one JSON reply per stdout line
    (``add``, ``prepare``, ``run``; ``quit`` or the end of stdin ends it). It takes over
    the process's stdout, so it runs in a process of its own.

    Example:
        >>> import json, subprocess, sys
        >>> code = "from aimv2.bench.worker import worker_main; worker_main()"
        >>> ask = json.dumps({"op": "nope"}) + chr(10)
        >>> out = subprocess.run([sys.executable, "-c", code], input=ask, capture_output=True,
        ...                      text=True).stdout
        >>> json.loads(out)
        {'skip': "unknown request 'nope'"}
    """
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever else gets printed goes to stderr, not into the protocol
    subjects: dict[int, Local] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        if op == "quit":
            break
        try:
            if op == "add":
                subjects[msg["key"]] = Local(Desc.from_json(msg["desc"]))
                reply: dict[str, Any] = {"ok": True}
            elif op == "prepare":
                reply = subjects[msg["key"]].prepare()
            elif op == "run":
                reply = subjects[msg["key"]].run()
            else:
                reply = {"skip": f"unknown request {op!r}"}
        except Skip as err:
            reply = {"skip": str(err)}
        except Exception as err:  # noqa: BLE001 (the parent reports it as a skip)
            reply = {"skip": f"{type(err).__name__}: {err}"}
        replies.write(json.dumps(reply) + "\n")
    return 0
