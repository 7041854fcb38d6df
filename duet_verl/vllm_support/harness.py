"""One vLLM ``AsyncLLM`` driven from synchronous code, with requests run through DUET's engine wrapper exactly as
DUET's vLLM server runs them (shared by ``duet-verl bench --vllm`` and the engine tests on CPU and GPU).

vLLM's output handler belongs to the event loop that started the engine (a second ``asyncio.run`` gets
``EngineDeadError``), so :class:`EngineHarness` owns one loop for the engine's lifetime.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

from duet_verl.adapters.stream_monitor import MonitoredRequest, monitored_generate, with_monitor

__all__ = ["EngineHarness"]


@dataclass
class _Produced:
    output: Any
    extra_fields: dict


class EngineHarness:
    """One ``AsyncLLM`` on one event loop; :meth:`run` drives a coroutine on that loop."""

    def __init__(self, engine_args):
        from vllm.v1.engine.async_llm import AsyncLLM

        self.loop = asyncio.new_event_loop()

        async def start():
            return AsyncLLM.from_engine_args(engine_args)

        self.llm = self.loop.run_until_complete(start())
        self.generate = monitored_generate(self.llm.generate, tokenizer=self.llm.tokenizer)

    def run(self, coro, timeout: float = 300.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        """Shut the engine down, then end its loop's tasks (its output handler) before closing the loop."""
        self.llm.shutdown()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def one(
        self, prompt_ids: list[int], params, request: MonitoredRequest | None, generate=None, request_id: str = ""
    ):
        """One request through DUET's engine wrapper, as the server runs it: (final output, request). ``generate``
        replaces the wrapped engine (e.g. the wrapper around a recorder of the engine's streams)."""
        request_id = request_id or uuid.uuid4().hex
        generate = generate or self.generate

        async def produce():
            final = None
            async for final in generate({"prompt_token_ids": prompt_ids}, params, request_id):
                pass
            return _Produced(final, {})

        return (await with_monitor(request, produce())).output, request

    def unfinished(self) -> int:
        """Requests the engine still holds (0 once every stream ended or was closed)."""
        return self.llm.output_processor.get_num_unfinished_requests()
