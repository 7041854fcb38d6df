"""The fixes vLLM's CPU backend needs to serve verl's hybrid trainer, as a vLLM general plug-in.

vLLM loads the entry points of group ``vllm.general_plugins`` in every one of its processes (front end, engine
core, workers); :func:`register` applies each fix there, and only on vLLM's CPU platform. Each fix has a contract
test (``tests/vllm/test_cpu_fixes_on_cpu.py``) that fails once vLLM no longer needs it.
"""

from __future__ import annotations

__all__ = ["keep_linear_weights_in_place", "register"]


def keep_linear_weights_in_place() -> None:
    """Keep each ``Linear`` layer's ``weight`` a real tensor.

    On CPU, vLLM 0.24 packs unquantized ``Linear`` weights for oneDNN and replaces ``layer.weight`` by an empty
    tensor (``model_executor/layers/utils.py::dispatch_cpu_unquantized_gemm(remove_weight=True)``). verl's hybrid
    trainer syncs new weights into the rollout model in place (``model.load_weights``), which then fails
    (``Attempted to load weight ... into parameter (torch.Size([0]))``). Without oneDNN, vLLM's own fallback,
    ``torch.nn.functional.linear`` on the layer's weight, is used and the weights stay loadable.
    """
    import vllm._custom_ops as ops

    ops._supports_onednn = False


def register() -> None:
    """The plug-in's entry point: apply the CPU fixes on vLLM's CPU platform, nothing elsewhere."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        keep_linear_weights_in_place()
