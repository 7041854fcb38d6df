"""math-verify in worker processes with a hard time limit.

sympy can take unbounded time on an answer a policy may well write (``\\boxed{9^{9^{9^{9}}}}`` holds the GIL in a
big-integer power for minutes), and math-verify's own timeout (``signal.alarm``) interrupts neither C code nor
anything outside the main thread, where verl's reward loop calls reward functions. So the comparison runs in a
small pool of spawned worker processes; a worker that misses the deadline is killed and replaced, and the answer
scores 0.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from multiprocessing.connection import Connection

__all__ = ["HARD_TIMEOUT_S", "MathWorkerPool", "math_equivalent"]

HARD_TIMEOUT_S = 10.0  # a comparison that takes longer scores 0 (its worker is killed)
_SOFT_TIMEOUT_S = 5  # math-verify's own parse/verify limits inside the worker (its main thread: signals work)
_START_TIMEOUT_S = 300.0  # a worker's start (spawn + importing sympy), not counted in a comparison's limit
_READY = "ready"


def _equivalent(answer: str, ground_truth: str) -> bool:
    """math-verify's verdict on two boxed answers (runs in a worker)."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    gold = parse(f"\\boxed{{{ground_truth}}}", extraction_config=config, parsing_timeout=_SOFT_TIMEOUT_S)
    predicted = parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=_SOFT_TIMEOUT_S)
    return bool(gold and predicted and verify(gold, predicted, timeout_seconds=_SOFT_TIMEOUT_S))


def _serve(conn: Connection) -> None:
    """Worker loop: import math-verify, say so, then answer each ``(answer, ground_truth)`` request with a bool
    (False on any error)."""
    import math_verify  # noqa: F401  (imported before the first deadline starts)

    conn.send(_READY)
    while True:
        try:
            answer, ground_truth = conn.recv()
        except EOFError:
            return
        try:
            verdict = _equivalent(answer, ground_truth)
        except Exception:  # math-verify or sympy failing on a malformed answer: not equivalent
            verdict = False
        conn.send(verdict)


class _Worker:
    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="duet-math-verify")
        self.process.start()
        child.close()
        try:
            ready = self.conn.poll(_START_TIMEOUT_S) and self.conn.recv() == _READY
        except (EOFError, OSError):  # the worker died while starting
            ready = False
        if not ready:
            self.close()
            raise RuntimeError(f"the math-verify worker did not start within {_START_TIMEOUT_S:.0f} s")

    def ask(self, answer: str, ground_truth: str, timeout_s: float) -> bool | None:
        """The verdict, or None after killing the worker when it missed ``timeout_s`` or died."""
        try:
            self.conn.send((answer, ground_truth))
            if self.conn.poll(timeout_s):
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        self.close()
        return None

    def close(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class MathWorkerPool:
    """Up to ``size`` worker processes, started on demand and shared by the calling threads."""

    def __init__(self, size: int, timeout_s: float = HARD_TIMEOUT_S):
        self.size, self.timeout_s = size, timeout_s
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._started = 0
        self._lock = threading.Lock()

    def _take(self) -> _Worker:
        """An idle worker, or a new one while fewer than ``size`` exist (started outside the lock, its slot given
        back if it fails to start, so a failed start never leaves later callers waiting for a worker forever)."""
        with self._lock:
            start = self._idle.empty() and self._started < self.size
            if start:
                self._started += 1
        if not start:
            return self._idle.get()
        try:
            return _Worker()
        except BaseException:
            with self._lock:
                self._started -= 1
            raise

    def equivalent(self, answer: str, ground_truth: str) -> bool:
        """math-verify's verdict, False when it takes longer than ``timeout_s``."""
        worker = self._take()
        verdict = worker.ask(answer, ground_truth, self.timeout_s)
        if verdict is None:
            with self._lock:
                self._started -= 1
            return False
        self._idle.put(worker)
        return verdict


_POOL: MathWorkerPool | None = None
_POOL_LOCK = threading.Lock()


def math_equivalent(answer: str, ground_truth: str) -> bool:
    """math-verify's verdict on two answers through this process's shared worker pool."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = MathWorkerPool(size=max(1, min(4, os.cpu_count() or 1)))
    return _POOL.equivalent(answer, ground_truth)
