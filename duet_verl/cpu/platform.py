"""A CPU "accelerator" for verl: the platform, FSDP engines for device ``cpu``, and one torch patch.

verl 0.9.1 has no CPU training path. Everything here uses verl's public registries except
:func:`patch_init_process_group` (see its docstring). It is opt-in, through verl's own platform override
``VERL_PLATFORM=cpu`` (set by the quickstart, the CPU recipe and the tests): only then does :mod:`duet_verl.plugin`
register the platform and the FSDP engines for ``cpu``. Without it nothing here touches verl, so a GPU cluster's
CPU-only head node keeps verl's own platform choice and no training engine is imported by ``import verl``.

Ray resources: verl's resource pools request the platform's ``ray_resource_name()`` per worker and
check the cluster's GPU count, so the CPU platform presents its worker slots as Ray *logical* GPUs
(``ray_init.num_gpus=N``), which Ray accepts on a CPU-only host.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch

__all__ = ["CPU_PLATFORM", "PlatformCPU", "cpu_platform_wanted", "patch_init_process_group", "register_cpu_backend"]

CPU_PLATFORM = "cpu"


def cpu_platform_wanted() -> bool:
    """True when this process is asked to run verl on the CPU (``VERL_PLATFORM=cpu``, verl's platform override);
    never guessed from the absence of a GPU."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == CPU_PLATFORM


def _no_op(*args, **kwargs) -> None:
    return None


def _zero(*args, **kwargs) -> int:
    return 0


def _mem_get_info(*args, **kwargs) -> tuple[int, int]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)
    except ImportError:  # pragma: no cover - psutil comes with ray
        return 0, 0


class _CPUDeviceModule(SimpleNamespace):
    """What verl calls through ``get_torch_device()``: ``torch.cpu`` plus harmless stand-ins for CUDA-only calls."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)


_DEVICE_MODULE = _CPUDeviceModule(
    empty_cache=_no_op,
    synchronize=_no_op,
    ipc_collect=_no_op,
    set_per_process_memory_fraction=_no_op,
    reset_peak_memory_stats=_no_op,
    mem_get_info=_mem_get_info,
    memory_allocated=_zero,
    memory_reserved=_zero,
    max_memory_allocated=_zero,
    max_memory_reserved=_zero,
    device_count=lambda: 1,
    get_device_name=lambda *a, **k: "cpu",
    get_rng_state=lambda *a, **k: torch.get_rng_state(),
    set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
    manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed,
    is_available=lambda: True,
)


def _platform_class():
    from verl.plugin.platform.platform_base import PlatformBase

    class PlatformCPU(PlatformBase):
        """verl platform for CPU-only hosts (gloo collectives, no device memory management)."""

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self):
            return _DEVICE_MODULE

        def is_available(self) -> bool:
            return cpu_platform_wanted()

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            return cpu_platform_wanted()

        def current_device(self):
            # verl feeds this to .to()/device=; an int would mean cuda:N, so return the CPU device itself.
            return torch.device("cpu")

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "GPU"  # logical slots: start Ray with ray_init.num_gpus=N on a CPU host

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    return PlatformCPU


PlatformCPU = None  # set by register_cpu_backend()


def patch_init_process_group() -> bool:
    """Patch ``torch.distributed.init_process_group`` to drop duplicate device entries in its backend string.

    verl 0.9.1 (``verl/utils/distributed.py``) always builds ``f"cpu:gloo,{device}:{backend}"``; with device
    ``cpu`` that is ``"cpu:gloo,cpu:gloo"``, which torch rejects ("Duplicate device type cpu"). The patch keeps
    the first entry per device and is a no-op for any other backend string. Returns True if it was applied now.
    """
    import torch.distributed as dist

    original = dist.init_process_group
    if getattr(original, "_duet_dedup", False):
        return False

    @functools.wraps(original)
    def init_process_group(*args, **kwargs):
        backend = kwargs.get("backend")
        if isinstance(backend, str) and "," in backend:
            kwargs["backend"] = dedup_backend(backend)
        return original(*args, **kwargs)

    init_process_group._duet_dedup = True
    dist.init_process_group = init_process_group
    return True


def dedup_backend(backend: str) -> str:
    """``"cpu:gloo,cpu:gloo"`` → ``"gloo"``; ``"cpu:gloo,cuda:nccl"`` unchanged."""
    seen: dict[str, str] = {}
    for part in backend.split(","):
        device, _, name = part.partition(":")
        seen.setdefault(device.strip(), name.strip() if name else device.strip())
    if len(seen) == 1:
        return next(iter(seen.values()))
    return ",".join(f"{d}:{b}" for d, b in seen.items())


def register_cpu_backend() -> None:
    """With ``VERL_PLATFORM=cpu``: register the platform and the FSDP engines for ``cpu`` and patch torch's
    process-group backend string. Otherwise do nothing."""
    global PlatformCPU
    if not cpu_platform_wanted():
        return
    from verl.plugin.platform.platform_manager import PlatformRegistry

    if PlatformCPU is None:  # before the engine import below: it asks verl for the platform at import time
        PlatformCPU = PlatformRegistry.register(platform=CPU_PLATFORM)(_platform_class())
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    from duet_verl.adapters.compat import engine_devices

    for model_type, engine in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        if "cpu" not in engine_devices(model_type, "fsdp2"):
            EngineRegistry.register(model_type=model_type, backend=["fsdp", "fsdp2"], device="cpu")(engine)
    patch_init_process_group()
