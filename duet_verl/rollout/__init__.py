"""Rollout-side adapters: the engine-agnostic stream monitor, DUET's agent loop and vLLM server."""
