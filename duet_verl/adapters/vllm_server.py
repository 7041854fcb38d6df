"""DUET's vLLM rollout server: verl's ``vLLMHttpServer`` with the stop/abort monitor in its generation loop.

Only imported inside the rollout server process (through the replica loader registered by
:mod:`duet_verl.plugin`), so CPU machines without vLLM never import it.

How it hooks in, without copying verl's ``generate``:

* ``generate`` takes the rollout's stop rule out of ``sampling_params["extra_args"]["duet"]``, makes its
  monitor current for this task (a context variable: request ids can repeat, see
  :mod:`duet_verl.adapters.stream_monitor`), calls verl's ``generate`` and attaches the monitor's record to
  ``TokenOutput.extra_fields["duet"]``.
* ``run_server`` wraps the engine's ``generate`` (an ``AsyncLLM`` instance attribute) so that requests with
  a monitor run lean (no top-k log-probs until an answer marker arms the rule, then a continuation that reads them;
  no detokenization: the monitor decodes the sampled tokens with the engine's tokenizer) and stream through
  :func:`~duet_verl.adapters.stream_monitor.monitored_stream`, which ends them early through the engine (closing
  ``AsyncLLM.generate`` aborts the request by its internal id; verl's own ``abort_request`` looks requests up
  by the external id and does not work with vLLM 0.24).
"""

from __future__ import annotations

import ray
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

from duet_verl.adapters.stream_monitor import monitored_generate, split_duet_rule, with_monitor

__all__ = ["DuetvLLMHttpServer", "DuetvLLMReplica"]


class DuetvLLMHttpServer(vLLMHttpServer):
    """verl's vLLM server plus DUET's per-request stop/abort monitor."""

    async def run_server(self, args):
        await super().run_server(args)
        self.engine.generate = monitored_generate(self.engine.generate, tokenizer=self.engine.tokenizer)

    async def generate(self, prompt_ids, sampling_params, request_id, *args, **kwargs):
        sampling_params, request = split_duet_rule(sampling_params)
        plain = super().generate(prompt_ids, sampling_params, request_id, *args, **kwargs)
        return await with_monitor(request, plain)


class DuetvLLMReplica(vLLMReplica):
    """verl's vLLM replica serving through :class:`DuetvLLMHttpServer`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(DuetvLLMHttpServer)
