"""DUET's agent loop against a real generating engine (tiny random Qwen2 on CPU), through verl's agent-loop code."""

import asyncio

import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry

from duet_verl.core.controller import DuetController
from duet_verl.core.settings import DuetSettings
from duet_verl.cpu.hf_server import HFRolloutServer
from duet_verl.rollout.agent_loop import DUET_AGENT_LOOP, DuetSingleTurnAgentLoop

RESPONSE = 24


class InProcessServerManager:
    """verl's LLMServerClient.generate contract, calling the server in this process instead of over Ray."""

    def __init__(self, server):
        self.server, self.calls = server, []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        self.calls.append(sampling_params)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("mm_processor_output", "priority")}
        output = await self.server.generate(
            prompt_ids=prompt_ids, sampling_params=sampling_params, request_id=request_id, **kwargs
        )
        output.extra_fields.setdefault("min_global_steps", output.extra_fields.get("global_steps"))
        return output


def config():
    return OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {
                    "prompt_length": 64,
                    "response_length": RESPONSE,
                    "full_determinism": False,
                    "multi_turn": {},
                    "agent": {},
                }
            },
            "data": {"apply_chat_template_kwargs": {}},
        }
    )


def make_loop(tiny_assets):
    """(agent loop, its server, tokenizer): the tokenizer is loaded from disk as verl loads it."""
    path, _, model = tiny_assets
    tokenizer = AutoTokenizer.from_pretrained(path)
    server = HFRolloutServer(model, tokenizer, response_length=RESPONSE)
    cfg = config()
    return (
        DuetSingleTurnAgentLoop(
            trainer_config=DictConfigWrap(cfg),
            server_manager=InProcessServerManager(server),
            tokenizer=tokenizer,
            processor=None,
            dataset_cls=None,
            data_config=DictConfigWrap(cfg.data),
            hf_model_type="qwen2",
        ),
        server,
        tokenizer,
    )


def prompt_rule(stop):
    settings = DuetSettings.from_mapping({"stop": stop})
    return DuetController(settings, group_size=8, response_cap=RESPONSE).plan(["7"], step=3).stop_rules[0]


def run_loop(tiny_assets, rule, session_id=0):
    async def go():
        loop, _, tokenizer = make_loop(tiny_assets)
        params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
        kwargs = {
            "raw_prompt": [{"role": "user", "content": "12+30="}],
            "index": 7,
            "session_id": session_id,
            "uid": "u",
        }
        if rule is not None:
            kwargs["duet_stop_rule"] = rule
        out = await loop.run(params, **kwargs)
        return out, params, loop.server_manager.calls, tokenizer

    return asyncio.run(go())


def test_agent_loop_is_registered_under_its_name():
    assert DUET_AGENT_LOOP in _agent_loop_registry


def test_confident_stop_ends_with_masked_eos(tiny_assets):
    # marker = any character, threshold 0: the first check arms and two tokens later it stops
    rule = prompt_rule(
        {
            "min_tokens": 2,
            "check_every": 1,
            "hysteresis": 2,
            "threshold_low": 0.0,
            "threshold_high": 0.0,
            "eps_len": 0.0,
            "marker_domains": [],
            "marker_regexes": ["."],
        }
    )
    out, params, calls, tokenizer = run_loop(tiny_assets, rule)
    fields = out.extra_fields
    assert fields["duet_outcome"] == "stopped_after_marker", fields
    assert out.response_ids[-1] == tokenizer.eos_token_id
    n = fields["duet"]["length"]
    assert len(out.response_ids) == n + 1
    assert out.response_mask[:n] == [1] * n and out.response_mask[n] == 0
    assert out.response_logprobs is not None and out.response_logprobs[n] == 0.0
    assert "extra_args" not in params  # the shared sampling params were not modified
    sent = calls[0]["extra_args"]["duet"]
    assert sent["eos_token_id"] == tokenizer.eos_token_id and isinstance(sent["seed"], int)


def test_marker_less_rollout_is_aborted_with_partial_tokens(tiny_assets):
    rule = prompt_rule({"min_tokens": 2, "grace": 2, "eps_abort": 1e-9, "marker_domains": ["code"]})
    out, _, _, tokenizer = run_loop(tiny_assets, rule)
    assert out.extra_fields["duet_outcome"] == "aborted"
    assert len(out.response_ids) == int(0.7 * RESPONSE) + 2
    assert tokenizer.eos_token_id not in out.response_ids


def test_per_rollout_seeds_differ_by_session_and_repeat_exactly(tiny_assets):
    rule = prompt_rule({"min_tokens": 2, "grace": 2, "eps_abort": 0.5, "marker_domains": ["code"]})
    seeds = [run_loop(tiny_assets, rule, session_id=s)[2][0]["extra_args"]["duet"]["seed"] for s in (0, 1, 0)]
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2]


def test_without_rule_it_is_plain_single_turn(tiny_assets):
    out, _, calls, _ = run_loop(tiny_assets, None)
    assert "extra_args" not in calls[0]
    assert out.extra_fields["duet_outcome"] == "natural_eos"
    assert all(m == 1 for m in out.response_mask) and 0 < len(out.response_ids) <= RESPONSE


@pytest.mark.parametrize("missing", ["eos"])
def test_rule_needs_an_eos_token(tiny_assets, missing):
    rule = prompt_rule({"min_tokens": 2})

    async def go():
        loop, _, _ = make_loop(tiny_assets)
        loop.tokenizer = type("NoEos", (), {"eos_token_id": None})()
        with pytest.raises(ValueError, match="eos_token_id"):
            await loop.run(
                {}, raw_prompt=[{"role": "user", "content": "x"}], index=1, session_id=0, duet_stop_rule=rule
            )

    asyncio.run(go())
