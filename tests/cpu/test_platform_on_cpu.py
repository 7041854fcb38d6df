"""The CPU backend for verl: platform selection, engines, and the one torch patch (with its contract)."""

import inspect
import os
import subprocess
import sys

import pytest

from duet_verl.cpu.platform import cpu_platform_wanted, dedup_backend


def test_fresh_process_resolves_verls_platform_to_cpu():
    code = (
        "import verl\n"
        "from verl.plugin.platform import get_platform\n"
        "from verl.utils.device import get_device_name, get_torch_device\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "p = get_platform()\n"
        "print(p.device_name, p.communication_backend_name(), get_device_name(), p.current_device())\n"
        "print(EngineRegistry.get_engine_cls('language_model', 'fsdp2').__name__)\n"
        "get_torch_device().empty_cache(); get_torch_device().synchronize()\n"
        "free, total = get_torch_device().mem_get_info(); print(total > 0)\n"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[0] == "cpu gloo cpu cpu"
    assert lines[1] == "FSDPEngineWithLMHead" and lines[2] == "True"


def test_cpu_platform_only_when_asked_for(monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert not cpu_platform_wanted()  # no GPU here, yet not chosen: never guessed
    monkeypatch.setenv("VERL_PLATFORM", "nvidia")
    assert not cpu_platform_wanted()
    monkeypatch.setenv("VERL_PLATFORM", "CPU")
    assert cpu_platform_wanted()


def test_without_the_override_import_verl_stays_as_verl_chose():
    """A GPU cluster's CPU-only node (no VERL_PLATFORM=cpu): ``import verl`` registers DUET's own pieces, imports no
    training engine, registers nothing for ``cpu`` and leaves verl's platform choice alone."""
    code = (
        "import sys, verl\n"
        "from duet_verl.plugin import assert_registered; assert_registered()\n"
        "heavy = ('verl.workers.engine.', 'megatron', 'transformer_engine')\n"
        "engines = [m for m in sys.modules if m.startswith(heavy)]\n"
        "print(engines)\n"
        "from verl.plugin.platform.platform_manager import PlatformRegistry, get_platform\n"
        "print('cpu' in PlatformRegistry.registered_names(), get_platform().device_name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().split("\n")
    assert lines[0] == "[]", lines[0]
    assert lines[1] == "False cuda", lines[1]  # verl's own fallback on a machine without a GPU


@pytest.mark.parametrize(
    ("backend", "expected"),
    [("cpu:gloo,cpu:gloo", "gloo"), ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"), ("cpu:gloo", "gloo")],
)
def test_backend_string_dedup(backend, expected):
    assert dedup_backend(backend) == expected


def test_verl_still_builds_the_duplicate_backend_string():
    """If verl stops building "cpu:gloo,{device}:..." the init_process_group patch can be removed: this fails then."""
    from verl.utils import distributed

    source = inspect.getsource(distributed)
    assert 'f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' in source


def test_patched_init_process_group_accepts_verls_cpu_string(tmp_path):
    code = (
        "import verl, torch.distributed as dist\n"
        f"dist.init_process_group(backend='cpu:gloo,cpu:gloo', init_method='file://{tmp_path}/rdzv', rank=0, "
        "world_size=1)\n"
        "print(dist.get_backend())\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VERL_PLATFORM": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "gloo"
