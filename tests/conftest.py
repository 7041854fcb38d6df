"""Shared fixtures: tiny local model/tokenizer assets (built once per session, nothing downloaded).

The suite runs verl on the CPU: the plug-in's CPU backend is opt-in through verl's platform override, set here for
this process and every process it starts (before anything imports verl)."""

import os

os.environ["VERL_PLATFORM"] = os.environ.get("VERL_PLATFORM") or "cpu"

import hypothesis  # noqa: F401  (imported up front: CPython 3.11.7 can fail to AST-rewrite it lazily at exit)
import pytest


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """(path, tokenizer, model) of a tiny randomly initialised Qwen2 model with a byte-level tokenizer."""
    from duet_verl.demo.assets import build_tiny_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny_model")
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, path)
    return path, tokenizer, model
