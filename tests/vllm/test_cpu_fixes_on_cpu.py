"""Contract tests of the vLLM CPU fixes (``duet_verl.vllm_support.cpu_fixes``): each fails once vLLM no longer
needs the fix, and the plug-in is found where vLLM looks for it."""

import importlib.metadata

import pytest
import torch


def test_the_fixes_are_a_vllm_general_plugin():
    from vllm.plugins import DEFAULT_PLUGINS_GROUP

    from duet_verl.vllm_support import cpu_fixes

    plugins = {e.name: e for e in importlib.metadata.entry_points(group=DEFAULT_PLUGINS_GROUP)}
    assert plugins["duet_verl_cpu_fixes"].load() is cpu_fixes.register


def _linear():
    layer = torch.nn.Linear(64, 32, bias=False)
    layer.weight.requires_grad_(False)
    return layer


def test_vllm_still_packs_linear_weights_away_on_cpu(monkeypatch):
    """The reason for ``keep_linear_weights_in_place``: with oneDNN, vLLM empties ``layer.weight``."""
    import vllm._custom_ops as ops
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    if not hasattr(torch.ops._C, "create_onednn_mm_handler"):
        pytest.fail("this vLLM CPU build has no oneDNN kernels: keep_linear_weights_in_place can go")
    monkeypatch.setattr(ops, "_supports_onednn", True)
    layer = _linear()
    dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    assert layer.weight.numel() == 0  # what breaks verl's in-place weight sync


def test_with_the_fix_weights_stay_loadable_and_the_layer_computes(monkeypatch):
    import vllm._custom_ops as ops
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    from duet_verl.vllm_support.cpu_fixes import keep_linear_weights_in_place

    monkeypatch.setattr(ops, "_supports_onednn", True)
    keep_linear_weights_in_place()
    assert ops._supports_onednn is False
    layer = _linear()
    dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    assert layer.weight.shape == (32, 64)
    new = torch.randn(32, 64)
    layer.weight.copy_(new)  # verl's sync writes into the parameter in place
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer.cpu_linear(x, layer.weight, None), x @ new.T)
