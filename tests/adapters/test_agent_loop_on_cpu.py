"""DUET's agent loop through verl's agent-loop code, against a server that applies DUET's stop rule exactly as
DUET's vLLM server does, over a scripted engine (which tokens come out is what these tests control; the real
vLLM engine is exercised in ``tests/vllm`` and end to end in ``tests/e2e``)."""

import asyncio
from dataclasses import fields

import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.experimental.agent_loop.agent_loop import DictConfigWrap

from duet_verl.adapters.agent_loop import DUET_AGENT_LOOP, DuetSingleTurnAgentLoop
from duet_verl.adapters.compat import agent_loop_names
from duet_verl.core.controller import DuetController
from duet_verl.core.rng import sample_seed
from duet_verl.core.settings import DuetSettings, StopSettings

from scripted_engine import SURE, UNSURE, InProcessServerManager, ScriptedEngine, ScriptedServer, text_script

RESPONSE = 24


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


def make_loop(tiny_assets, script):
    """(agent loop, its server, tokenizer): the tokenizer is loaded from disk as verl loads it; the server streams
    ``script(tokenizer)``."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets[0])
    server = ScriptedServer([ScriptedEngine(script(tokenizer))], max_tokens=RESPONSE)
    return build_loop(tokenizer, server), server, tokenizer


def confident_answer(tokenizer):
    """A confident 21-token answer, then the end-of-turn token (fits in ``RESPONSE``)."""
    return text_script(tokenizer, ("12+30=42, so 42 it is", SURE), eos=True)


def marker_less(tokenizer):
    """``RESPONSE`` unsure tokens that never write an answer marker."""
    return text_script(tokenizer, ("x" * RESPONSE, UNSURE))


def build_loop(tokenizer, server):
    """DUET's agent loop as verl's worker builds it, talking to ``server`` (call inside the running event loop)."""
    cfg = config()
    return DuetSingleTurnAgentLoop(
        trainer_config=DictConfigWrap(cfg),
        server_manager=InProcessServerManager(server),
        tokenizer=tokenizer,
        processor=None,
        dataset_cls=None,
        data_config=DictConfigWrap(cfg.data),
        hf_model_type="qwen2",
    )


def prompt_rule(stop):
    settings = DuetSettings.from_mapping({"stop": stop})
    return DuetController(settings, group_size=8, response_cap=RESPONSE).plan(["7"], step=3).stop_rules[0].to_dict()


def run_loop(tiny_assets, rule, session_id=0, script=confident_answer, **columns):
    async def go():
        loop, _, tokenizer = make_loop(tiny_assets, script)
        params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
        kwargs = {
            "raw_prompt": [{"role": "user", "content": "12+30="}],
            "index": 7,
            "session_id": session_id,
            "uid": "u",
        }
        if rule is not None:
            kwargs["duet_stop_rule"] = rule
        out = await loop.run(params, **kwargs, **columns)
        return out, params, loop.server_manager.calls, tokenizer

    return asyncio.run(go())


def test_agent_loop_is_registered_under_its_name():
    assert DUET_AGENT_LOOP in agent_loop_names()


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
    assert fields["duet"]["outcome"] == "stopped_after_marker", fields
    assert out.response_ids[-1] == tokenizer.eos_token_id
    n = fields["duet"]["length"]
    assert len(out.response_ids) == n + 1
    assert out.response_mask[:n] == [1] * n and out.response_mask[n] == 0
    assert out.response_logprobs is not None and out.response_logprobs[n] == 0.0
    assert "extra_args" not in params  # the shared sampling params were not modified
    sent = calls[0]["extra_args"]["duet"]
    assert sent["eos_token_id"] == tokenizer.eos_token_id and isinstance(sent["monitor"]["seed"], int)


def test_marker_less_rollout_is_aborted_with_partial_tokens(tiny_assets):
    rule = prompt_rule({"min_tokens": 2, "grace": 2, "eps_abort": 1e-9, "marker_domains": ["code"]})
    out, _, _, tokenizer = run_loop(tiny_assets, rule, script=marker_less)
    assert out.extra_fields["duet"]["outcome"] == "aborted"
    assert len(out.response_ids) == int(0.7 * RESPONSE) + 2
    assert out.response_ids == [t for t, _, _ in marker_less(tokenizer)][: len(out.response_ids)]
    assert tokenizer.eos_token_id not in out.response_ids


def test_per_rollout_seeds_differ_by_session_and_repeat_exactly(tiny_assets):
    rule = prompt_rule({"min_tokens": 2, "grace": 2, "eps_abort": 0.5, "marker_domains": ["code"]})
    seeds = [
        run_loop(tiny_assets, rule, session_id=s)[2][0]["extra_args"]["duet"]["monitor"]["seed"] for s in (0, 1, 0)
    ]
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2]


def test_a_row_sampling_seed_gives_each_sample_its_own_repeatable_engine_seed(tiny_assets):
    seeds = [
        run_loop(tiny_assets, rule, session_id=s, duet_sampling_seed=41)[2][0]["seed"]
        for rule, s in ((None, 0), (None, 1), (None, 0), (prompt_rule({}), 0))
    ]
    assert seeds[0] == sample_seed(41, 0) and seeds[1] == sample_seed(41, 1) != seeds[0]
    assert seeds[2] == seeds[0] == seeds[3]  # repeats, with or without DUET's stop rule
    assert 0 <= min(seeds) and max(seeds) < 2**63
    assert "seed" not in run_loop(tiny_assets, None)[2][0]  # rows without the column sample freely


def test_without_rule_it_is_plain_single_turn(tiny_assets):
    out, _, calls, tokenizer = run_loop(tiny_assets, None)
    assert "extra_args" not in calls[0]
    report = out.extra_fields["duet"]
    assert report["outcome"] == "natural_eos" and not report["monitored"] and report["length"] == len(out.response_ids)
    assert [t for t, _, _ in confident_answer(tokenizer)] == out.response_ids  # every token, the end-of-turn too
    assert all(m == 1 for m in out.response_mask)


def test_rule_needs_an_eos_token(tiny_assets):
    rule = prompt_rule({"min_tokens": 2})

    async def go():
        loop, _, _ = make_loop(tiny_assets, confident_answer)
        loop.tokenizer = type("NoEos", (), {"eos_token_id": None})()
        with pytest.raises(ValueError, match="eos_token_id"):
            await loop.run(
                {}, raw_prompt=[{"role": "user", "content": "x"}], index=1, session_id=0, duet_stop_rule=rule
            )

    asyncio.run(go())


def test_every_stop_setting_reaches_the_monitor_inside_the_rollout_server(tiny_assets):
    """Non-default duet.stop.* values, planned by the controller, carried by the agent loop through verl's sampling
    params, arrive in the monitor the server runs."""
    stop = {
        "min_tokens": 3,
        "grace": 7,
        "check_every": 4,
        "hysteresis": 6,
        "signal": "entropy",
        "top_logprobs": 5,
        "eps_len": 0.25,
        "eps_abort": 0.125,
        "marker_domains": ["code"],
        "marker_regexes": ["DONE"],
        "threshold_mode": "linear",
        "threshold_low": 0.61,
        "threshold_high": 0.61,
    }
    # every stop setting is covered; markers_by_data_source acts in the trainer (tests/adapters/test_trainer_on_cpu.py)
    assert set(stop) | {"enable", "markers_by_data_source"} == {f.name for f in fields(StopSettings)}
    settings = DuetSettings.from_mapping({"stop": stop})
    plan = DuetController(settings, group_size=8, response_cap=RESPONSE).plan(["7"], step=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets[0])
    server = ScriptedServer([ScriptedEngine(text_script(tokenizer, ("abc", UNSURE), eos=True))])

    async def go():
        loop = build_loop(tokenizer, server)
        kwargs = {"raw_prompt": [{"role": "user", "content": "1+1="}], "index": 7, "session_id": 2, "uid": "u"}
        await loop.run({"temperature": 1.0}, duet_stop_rule=plan.stop_rules[0].to_dict(), **kwargs)

    asyncio.run(go())
    (request,) = server.monitors
    monitor = request.monitor.config
    for name in ("min_tokens", "grace", "check_every", "hysteresis", "signal", "eps_len", "eps_abort"):
        assert getattr(monitor, name) == stop[name], name
    assert monitor.markers.domains == ("code",) and monitor.markers.regexes == ("DONE",)
    assert monitor.threshold == pytest.approx(0.61)  # threshold_mode/low/high: a single prompt gets the midpoint
    assert request.top_k == 5 and request.eos_token_id == tokenizer.eos_token_id
    assert (monitor.k1, monitor.k2) == (int(0.3 * RESPONSE), int(0.7 * RESPONSE))
    assert monitor.seed == plan.stop_rules[0].for_rollout("7/2", tokenizer.eos_token_id).monitor.seed
