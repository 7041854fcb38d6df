"""The HumanEval sandbox: right and wrong code, and what it must contain (fork bomb, infinite loop, memory hog,
network) — each scored 0, ended within its limit, the parent unharmed — in both isolation modes."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from duet_verl.verifiers import compute_score, sandbox
from duet_verl.verifiers.humaneval import extract_code, humaneval_program
from duet_verl.verifiers.sandbox import NOBODY, SandboxLimits, namespace_isolation_works, run_python

TASK = {
    "index": 0,
    "split": "test",
    "task_id": "Fixture/0",
    "prompt_code": 'from typing import List\n\n\ndef add_all(numbers: List[int]) -> int:\n    """Sum."""\n',
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0",
    "entry_point": "add_all",
}
RIGHT = "Here it is:\n```python\ndef add_all(numbers: List[int]) -> int:\n    return sum(numbers)\n```"
ISOLATIONS = ["socket_block", "namespace"] if namespace_isolation_works() else ["socket_block"]
TIMEOUT = 2.0
BOMB = "import os\nfor _ in range(100000):\n    os.fork()\n"


def score(body: str) -> float:
    """Score a completion whose function body is ``body`` (indented by the caller)."""
    return compute_score("humaneval", f"```python\ndef add_all(numbers):\n{body}\n```", "", TASK)


def test_right_and_wrong_completions():
    assert compute_score("humaneval", RIGHT, "", TASK) == 1.0
    assert compute_score("humaneval", "    return sum(numbers)\n", "", TASK) == 1.0  # a plain body continues
    assert score("    return sum(numbers) + 1") == 0.0
    assert score("    return sum(numbers") == 0.0  # syntax error
    assert compute_score("humaneval", "I cannot do this.", "", TASK) == 0.0


def test_the_program_puts_prompt_code_completion_and_tests_together():
    program = humaneval_program(RIGHT, TASK["prompt_code"], TASK["test"], "add_all")
    assert program.startswith("from typing import List")  # the prompt's imports stay available
    assert program.index("return sum(numbers)") < program.index("def check(") < program.index("check(add_all)")
    assert extract_code("a\n```py\nfirst\n```\nb\n```python\nsecond\n```") == "second\n"


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit"])
def test_exiting_before_the_tests_does_not_pass(exit_call):
    assert run_python("x = 1").passed  # negative control: a program that ends normally passes
    result = run_python(f"{exit_call}\nraise AssertionError('the tests would fail')")
    assert result.returncode == 0 and not result.completed and not result.passed
    assert score(f"    return 0\n\n{exit_call}") == 0.0  # the reward hack: leave before check() runs


def test_missing_task_fields_name_them():
    with pytest.raises(ValueError, match="entry_point"):
        compute_score("humaneval", RIGHT, "", {k: v for k, v in TASK.items() if k != "entry_point"})


def _user_processes() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def _assert_contained(source: str, isolation: str, **limits) -> None:
    """Run ``source`` (which would pass if not contained); it must fail within the limit and leave nothing."""
    limits = SandboxLimits(isolation=isolation, timeout_s=TIMEOUT, **limits)
    before = _user_processes()
    start = time.monotonic()
    result = run_python(source, limits)
    assert time.monotonic() - start < TIMEOUT + 3.0
    assert not result.passed and result.isolation == isolation
    time.sleep(0.2)
    leftovers = [pid for pid in _user_processes() - before if "program.py" in _cmdline(pid)]
    assert leftovers == []
    assert run_python("print('still fine')", limits).passed  # the parent can still start processes


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_infinite_loop_is_killed_at_the_time_limit(isolation):
    start = time.monotonic()
    result = run_python("while True:\n    pass\n", SandboxLimits(isolation=isolation, timeout_s=TIMEOUT))
    assert result.timed_out and not result.passed
    assert TIMEOUT <= time.monotonic() - start < TIMEOUT + 3.0


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_fork_bomb_is_contained(isolation):
    _assert_contained(BOMB, isolation)
    assert score("    import os\n    while True:\n        os.fork()") == 0.0


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel exempts only root from RLIMIT_NPROC")
@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_as_root_without_a_cgroup_the_program_runs_as_nobody_and_its_fork_bomb_fails(isolation, monkeypatch, tmp_path):
    python = shutil.which("python3", path="/usr/bin:/bin")  # an interpreter outside /root, readable by nobody
    if python is None or sandbox._run_as(python) != NOBODY:
        pytest.skip("no interpreter that the user nobody can run")
    monkeypatch.setattr(sandbox, "_CGROUP_ROOTS", ())  # as in a container without a writable cgroup tree
    secret = tmp_path / "root_only.txt"
    secret.write_text("root's")
    secret.chmod(0o600)
    assert secret.read_text() == "root's"  # the parent (root) reads it; the program, as nobody, cannot
    probe = (
        f"try:\n    open({str(secret)!r}).read()\nexcept PermissionError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    result = run_python(probe, SandboxLimits(isolation=isolation, python=python))
    assert result.passed and result.user == NOBODY, result.stderr_tail
    bomb = run_python(BOMB, SandboxLimits(isolation=isolation, python=python, timeout_s=TIMEOUT))
    assert not bomb.timed_out and "BlockingIOError" in bomb.stderr_tail  # RLIMIT_NPROC, not the clock, stopped it
    _assert_contained(BOMB, isolation, python=python)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_memory_hog_gets_memory_error(isolation):
    hog = "chunks = []\nfor _ in range(10000):\n    chunks.append(bytearray(10**8))\n"
    result = run_python(hog, SandboxLimits(isolation=isolation, timeout_s=TIMEOUT * 5, memory_bytes=512 << 20))
    assert not result.passed and not result.timed_out and "MemoryError" in result.stderr_tail
    _assert_contained(hog, isolation, memory_bytes=512 << 20)


@pytest.fixture
def local_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_network_is_unreachable(isolation, local_server):
    reach = f"import socket\nsocket.create_connection(('127.0.0.1', {local_server}), timeout=1).close()\n"
    # negative control: the same program outside the sandbox connects
    assert subprocess.run([sys.executable, "-c", reach], timeout=30).returncode == 0
    _assert_contained(reach, isolation)


def test_clean_environment_and_private_working_directory(monkeypatch):
    monkeypatch.setenv("DUET_SECRET", "leak")
    probe = (
        "import os, sys\n"
        "assert 'DUET_SECRET' not in os.environ, 'environment leaked'\n"
        "assert os.path.basename(os.getcwd()).startswith('duet_sandbox_')\n"
        "assert sorted(os.listdir('.')) == ['program.py', 'stderr.txt'], os.listdir('.')\n"
    )
    assert run_python(probe).passed


def test_limits_are_checked():
    with pytest.raises(ValueError, match="isolation"):
        SandboxLimits(isolation="docker")
    with pytest.raises(ValueError, match="positive"):
        SandboxLimits(timeout_s=0)


def test_the_process_limit_counts_threads_as_the_kernel_does():
    """RLIMIT_NPROC counts every task (thread) of the user: a trainer with hundreds of Ray/torch threads would
    otherwise leave its sandboxed program no room to start at all."""
    import threading

    from duet_verl.verifiers.sandbox import _task_count

    before, stop = _task_count(os.getuid()), threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(40)]
    for thread in threads:
        thread.start()
    try:
        assert _task_count(os.getuid()) >= before + 40
    finally:
        stop.set()
        for thread in threads:
            thread.join()
