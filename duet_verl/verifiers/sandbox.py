"""Run untrusted Python (a model's HumanEval completion) in a contained subprocess.

Every run gets a fresh temporary directory as its working directory and home, a clean environment, Python's
isolated mode (``-I``), and limits set by a tiny launcher before anything untrusted starts:

* time: the whole process group is killed with SIGKILL at ``timeout_s`` (``RLIMIT_CPU`` as a backstop);
* memory: ``RLIMIT_AS`` (address space), so a memory hog gets ``MemoryError`` instead of the node's RAM;
* processes: ``RLIMIT_NPROC`` (a fork bomb's forks fail). The kernel counts it per user and exempts root, so the
  limit is the running user's current process count plus ``max_processes``, and as root (a container's usual
  user) the program runs as ``nobody`` (when ``nobody`` can run the interpreter, probed once) and, where one can
  be created, in its own ``pids`` cgroup (v1 ``/sys/fs/cgroup/pids`` or a v2 hierarchy with the ``pids``
  controller) with ``pids.max = max_processes``. Root without either is stopped by the time limit only;
* files: ``RLIMIT_FSIZE``, no core dumps;
* an ending: a run passes only with exit status 0 *and* after its last line ran, which writes a random token into a
  file; so ``sys.exit(0)`` or ``os._exit(0)`` before the task's tests does not pass (a reward hack otherwise);
* network, ``isolation="namespace"`` (chosen by ``"auto"`` where it works): util-linux ``unshare`` puts the program
  in new user, network and PID namespaces — no network device but a loopback that is down, and every process it
  starts dies with it (``--kill-child``, PID namespace). It needs unprivileged user namespaces (most Linux hosts;
  not inside a default Docker container, whose seccomp profile blocks them);
* ``isolation="socket_block"`` (the fallback) only replaces the ``socket`` module's constructors in the child. It
  is **weaker**: code that imports ``_socket`` or uses ``ctypes`` can still reach the network.

Neither mode is a security boundary against a determined attacker (no seccomp; the program can read what its user
can read, and when it runs as the trainer's own user — a non-root trainer, or root where ``nobody`` cannot run the
interpreter — it can also write the trainer's files and signal its processes: run training as a dedicated user). It
keeps a policy's mistakes and accidents (loops, hogs, forks, stray connections) from harming the trainer.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["ISOLATIONS", "NOBODY", "SandboxLimits", "SandboxResult", "namespace_isolation_works", "run_python"]

ISOLATIONS = ("auto", "namespace", "socket_block")
NOBODY = 65534  # the unprivileged user a root parent runs programs as

_LAUNCHER = """
import json, os, resource, sys
setup = json.loads(sys.argv[1])
if setup["cgroup_procs"]:
    with open(setup["cgroup_procs"], "w") as procs:
        procs.write(str(os.getpid()))
for name, value in setup["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if setup["user"] is not None:
    os.setgroups([])
    os.setgid(setup["user"])
    os.setuid(setup["user"])
os.execvp(sys.argv[2], sys.argv[2:])
"""
_CGROUP_ROOTS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")

_SOCKET_BLOCK = """
import socket as _duet_socket
def _duet_no_network(*args, **kwargs):
    raise OSError("network access is disabled in this sandbox")
for _duet_name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(_duet_socket, _duet_name, _duet_no_network)
del _duet_socket, _duet_name
"""

_DONE_FILE = "done.txt"
_UNSHARE = ("--user", "--map-root-user", "--net", "--pid", "--kill-child")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = 10.0
    memory_bytes: int = 1 << 30
    max_processes: int = 32  # on top of the processes the user already runs
    file_bytes: int = 16 << 20
    isolation: str = "auto"  # one of ISOLATIONS
    python: str = sys.executable  # the interpreter that runs the program

    def __post_init__(self):
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        if self.timeout_s <= 0 or self.memory_bytes <= 0 or self.max_processes < 1 or self.file_bytes <= 0:
            raise ValueError(f"sandbox limits must be positive, got {self}")


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended."""

    returncode: int
    timed_out: bool
    completed: bool  # the program's last line ran (it wrote the run's token)
    isolation: str  # the isolation actually used: "namespace" or "socket_block"
    user: int  # the user id the program ran as
    seconds: float
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.completed


def _launch(command: list[str], user: int | None, workdir: str, timeout_s: float, rlimits: dict, cgroup: str | None):
    """Start ``command`` through the launcher in its own session; return ``(returncode, timed_out)``."""
    setup = {
        "rlimits": rlimits,
        "cgroup_procs": os.path.join(cgroup, "cgroup.procs") if cgroup else None,
        "user": user,
    }
    env = {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    with open(os.path.join(workdir, "stderr.txt"), "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _LAUNCHER, json.dumps(setup), *command],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)
            proc.wait()
    return proc.returncode, timed_out


def _private_dir(user: int | None) -> tempfile.TemporaryDirectory:
    workdir = tempfile.TemporaryDirectory(prefix="duet_sandbox_")
    if user is not None:
        os.chown(workdir.name, user, user)
    return workdir


@functools.cache
def _run_as(python: str) -> int | None:
    """``NOBODY`` when this process is root and ``nobody`` can run ``python`` (probed once), else None."""
    if os.geteuid() != 0:
        return None
    with _private_dir(NOBODY) as workdir:
        probe = _launch([python, "-I", "-c", "pass"], NOBODY, workdir, 30.0, {}, None)
    return NOBODY if probe == (0, False) else None


@functools.cache
def namespace_isolation_works(python: str = sys.executable) -> bool:
    """Whether ``unshare`` creates user, network and PID namespaces here for the sandbox's user (probed once)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    user = _run_as(python)
    uid = os.getuid() if user is None else user
    limit = {"RLIMIT_NPROC": _nproc_limit(uid, SandboxLimits().max_processes)}  # as the programs will run
    with _private_dir(user) as workdir:
        probe = _launch([unshare, *_UNSHARE, python, "-I", "-c", "pass"], user, workdir, 30.0, limit, None)
    return probe == (0, False)


def _task_count(uid: int) -> int:
    """Threads of the processes owned by ``uid``: what ``RLIMIT_NPROC`` counts (every thread is a task; a trainer's
    Ray, torch and vLLM workers run hundreds)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(os.path.join(entry.path, "task")))
            except OSError:
                pass
    return count


def _nproc_limit(uid: int, max_processes: int) -> int:
    """``RLIMIT_NPROC`` that lets the program start ``max_processes`` more tasks than ``uid`` runs now."""
    return _task_count(uid) + max_processes


def _resolve_isolation(requested: str, python: str) -> str:
    if requested == "auto":
        return "namespace" if namespace_isolation_works(python) else "socket_block"
    if requested == "namespace" and not namespace_isolation_works(python):
        raise RuntimeError("namespace isolation requested, but 'unshare' cannot create user namespaces here")
    return requested


def run_python(source: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``source`` as a Python program under ``limits``; never raises for anything the program does."""
    limits = limits or SandboxLimits()
    isolation = _resolve_isolation(limits.isolation, limits.python)
    user = _run_as(limits.python)
    uid = os.getuid() if user is None else user
    rlimits = {
        "RLIMIT_AS": limits.memory_bytes,
        "RLIMIT_NPROC": _nproc_limit(uid, limits.max_processes),
        "RLIMIT_CPU": int(limits.timeout_s) + 1,
        "RLIMIT_FSIZE": limits.file_bytes,
        "RLIMIT_CORE": 0,
    }
    cgroup = _pids_cgroup(limits.max_processes) if os.geteuid() == 0 else None
    start = time.monotonic()
    try:
        with _private_dir(user) as workdir:
            program, token = os.path.join(workdir, "program.py"), secrets.token_hex(16)
            ending = f"\n\nwith open({_DONE_FILE!r}, 'w') as _duet_done:\n    _duet_done.write({token!r})\n"
            with open(program, "w", encoding="utf-8") as handle:
                handle.write((_SOCKET_BLOCK if isolation == "socket_block" else "") + source + ending)
            command = [limits.python, "-I", program]
            if isolation == "namespace":
                command = [shutil.which("unshare") or "unshare", *_UNSHARE, *command]
            returncode, timed_out = _launch(command, user, workdir, limits.timeout_s, rlimits, cgroup)
            tail = _tail(os.path.join(workdir, "stderr.txt"))
            completed = _read(os.path.join(workdir, _DONE_FILE)) == token
    finally:
        if cgroup:
            _remove_cgroup(cgroup)
    return SandboxResult(returncode, timed_out, completed, isolation, uid, time.monotonic() - start, tail)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(64)
    except (OSError, UnicodeDecodeError):
        return None


def _tail(path: str, size: int = 2000) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - size))
        return handle.read().decode("utf-8", "replace")


def _kill_group(pgid: int) -> None:
    """SIGKILL every process left in the run's process group (the session the run started)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_cgroup(max_processes: int) -> str | None:
    """A fresh ``pids`` cgroup limited to ``max_processes`` (root only), or None where none can be made."""
    for root in _CGROUP_ROOTS:
        try:
            path = tempfile.mkdtemp(prefix="duet_sandbox_", dir=root)
        except OSError:
            continue
        limit = os.path.join(path, "pids.max")
        try:
            if os.path.exists(limit):  # created by the kernel only in a cgroup with the pids controller
                with open(limit, "w") as handle:
                    handle.write(str(max_processes))
                return path
        except OSError:
            pass
        os.rmdir(path)  # an empty directory either way
    return None


def _remove_cgroup(path: str) -> None:
    """Kill what is left in the cgroup (processes that left the process group) and remove it."""
    for _ in range(50):
        try:
            with open(os.path.join(path, "cgroup.procs")) as handle:
                pids = [int(line) for line in handle if line.strip()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.02)
