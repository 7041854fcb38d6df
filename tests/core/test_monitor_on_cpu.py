import math

import pytest

from duet_verl.core.markers import MarkerSpec
from duet_verl.core.monitor import Action, Outcome, StopAbortMonitor, StopRuleConfig
from duet_verl.core.rng import RolloutRandom, rollout_seed

CONFIDENT = [math.log(0.999), math.log(0.0005)]  # margin ~0.9985
UNSURE = [math.log(0.5), math.log(0.4)]  # margin 0.1


def config(**kw):
    base = dict(
        k1=20,
        k2=60,
        threshold=0.9,
        seed=1,
        min_tokens=10,
        grace=10,
        check_every=4,
        hysteresis=3,
        eps_len=0.0,
        eps_abort=1e-12,  # (0, 1]: practically never kept
    )
    base.update(kw)
    return StopRuleConfig(**base)


def run(monitor, script):
    """script: list of (text, logprobs); returns (action, tokens consumed)."""
    for i, (text, lps) in enumerate(script):
        action = monitor.on_token(text, lps)
        if action is not Action.CONTINUE:
            return action, i + 1
    return Action.CONTINUE, len(script)


def test_nothing_happens_before_min_tokens_even_with_marker():
    mon = StopAbortMonitor(config(k1=0, min_tokens=30))
    action, used = run(mon, [("\\boxed{1}", CONFIDENT)] + [("x", CONFIDENT)] * 28)
    assert action is Action.CONTINUE and used == 29 and mon.record.marker_at is None


def test_phase_a_to_b_then_confident_stop_after_hysteresis():
    mon = StopAbortMonitor(config())
    script = [("a", UNSURE)] * 5 + [("\\boxed{12}", UNSURE)] + [("b", UNSURE)] * 14  # 20 tokens: check at k1=20
    assert run(mon, script) == (Action.CONTINUE, 20)
    assert mon.record.marker_at == 20
    # armed: unsure tokens keep it going, a streak broken at 2 resets, then 3 confident in a row stop it
    action, used = run(mon, [("c", CONFIDENT)] * 2 + [("d", UNSURE)] + [("e", CONFIDENT)] * 3)
    assert (action, used) == (Action.STOP, 6)
    rec = mon.record
    assert rec.outcome is Outcome.STOPPED_AFTER_MARKER and rec.length == rec.ended_at == 26


def test_marker_split_across_tokens_is_found_at_next_check():
    mon = StopAbortMonitor(config())
    script = (
        [("x", UNSURE)] * 18 + [("\\bo", UNSURE), ("xed{", UNSURE), ("7", UNSURE), ("}", UNSURE)] + [("z", UNSURE)] * 2
    )
    run(mon, script)
    assert mon.record.marker_at == 24  # checks at 20 (opener only, unclosed) and 24


def test_phase_c_aborts_without_marker():
    mon = StopAbortMonitor(config())
    action, used = run(mon, [("x", CONFIDENT)] * 100)
    assert (action, used) == (Action.ABORT, 70)  # k2 + grace
    assert mon.record.outcome is Outcome.ABORTED and mon.record.length == 70


def test_last_chance_marker_check_at_deadline_prevents_abort():
    mon = StopAbortMonitor(config())
    script = [("x", UNSURE)] * 69 + [("\\boxed{3}", UNSURE)] + [("y", UNSURE)] * 30
    action, used = run(mon, script)
    assert action is Action.CONTINUE and mon.record.marker_at == 70
    assert mon.finish().outcome is Outcome.NATURAL_EOS and mon.record.length == 100


def test_eps_kept_runs_free_to_the_end():
    mon = StopAbortMonitor(config(eps_abort=1.0))
    action, used = run(mon, [("x", CONFIDENT)] * 90 + [("\\boxed{1}", CONFIDENT)] + [("x", CONFIDENT)] * 20)
    assert action is Action.CONTINUE
    rec = mon.finish(Outcome.LENGTH_CAP)
    assert rec.outcome is Outcome.EPS_KEPT and rec.length == 111 and rec.marker_at is None


def test_length_exploration_skips_stop_and_disables_stopping():
    mon = StopAbortMonitor(config(eps_len=1.0))
    action, _ = run(mon, [("\\boxed{1}", CONFIDENT)] + [("x", CONFIDENT)] * 200)
    assert action is Action.CONTINUE
    rec = mon.finish()
    assert rec.length_explored and rec.outcome is Outcome.NATURAL_EOS


def test_natural_end_and_length_cap_records():
    mon = StopAbortMonitor(config())
    run(mon, [("x", UNSURE)] * 15)
    assert mon.finish().outcome is Outcome.NATURAL_EOS
    mon = StopAbortMonitor(config())
    run(mon, [("x", UNSURE)] * 15)
    assert mon.finish(Outcome.LENGTH_CAP).outcome is Outcome.LENGTH_CAP
    mon = StopAbortMonitor(config())
    run(mon, [("x", UNSURE)] * 15)
    rec = mon.finish(Outcome.ENGINE_ABORTED)
    assert rec.outcome is Outcome.ENGINE_ABORTED and rec.length == rec.ended_at == 15
    with pytest.raises(ValueError, match="ended_by"):
        StopAbortMonitor(config()).finish(Outcome.ABORTED)


def test_decisions_the_engine_did_not_carry_out():
    """A stop that did not take effect becomes the engine's ending with the real length; an abort stands."""
    mon = StopAbortMonitor(config())
    action, used = run(mon, [("\\boxed{1}", CONFIDENT)] + [("x", CONFIDENT)] * 200)
    assert action is Action.STOP and mon.record.outcome is Outcome.STOPPED_AFTER_MARKER
    rec = mon.finish(Outcome.NATURAL_EOS, length=used + 40)
    assert rec.outcome is Outcome.NATURAL_EOS and rec.length == rec.ended_at == used + 40
    assert rec.marker_at is not None
    mon = StopAbortMonitor(config(eps_abort=1e-12))
    action, used = run(mon, [("x", CONFIDENT)] * 300)
    assert action is Action.ABORT
    rec = mon.finish(Outcome.LENGTH_CAP, length=300)
    assert rec.outcome is Outcome.ABORTED and rec.length == 300 and rec.ended_at == used


def test_cap_below_deadline_never_aborts():
    mon = StopAbortMonitor(config(k1=20, k2=500, grace=100))
    assert run(mon, [("x", CONFIDENT)] * 300) == (Action.CONTINUE, 300)


@pytest.mark.parametrize("signal", ["max_prob", "entropy", "top_k_mass", "margin"])
def test_every_signal_can_stop(signal):
    mon = StopAbortMonitor(config(signal=signal, k1=0, min_tokens=1, check_every=1))
    action, used = run(mon, [("\\boxed{1}", CONFIDENT)] + [("x", CONFIDENT)] * 10)
    assert action is Action.STOP and used == 4


def test_randomness_is_reproducible_and_matches_eps_abort():
    def outcome(seed):
        mon = StopAbortMonitor(config(seed=seed, eps_abort=0.2))
        run(mon, [("x", UNSURE)] * 80)
        return mon.record.outcome

    seeds = [rollout_seed(7, 3, f"uid-{i}") for i in range(4000)]
    first = [outcome(s) for s in seeds]
    assert first == [outcome(s) for s in seeds]
    kept = sum(o is Outcome.EPS_KEPT for o in first) / len(first)
    assert abs(kept - 0.2) < 4 * math.sqrt(0.2 * 0.8 / len(first))
    assert set(first) == {Outcome.EPS_KEPT, Outcome.ABORTED}


def test_rollout_seed_depends_on_each_part_and_uniform_is_in_range():
    base = rollout_seed(1, 2, "a")
    assert len({base, rollout_seed(2, 2, "a"), rollout_seed(1, 3, "a"), rollout_seed(1, 2, "b")}) == 4
    rng = RolloutRandom(base)
    draws = [rng.uniform() for _ in range(20000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.01


def test_config_round_trips_through_plain_dict_and_validates():
    cfg = config(markers=MarkerSpec(domains=("math",), regexes=(r"ANS:\d",)))
    data = cfg.to_dict()
    assert isinstance(data["markers"]["domains"], list)
    assert StopRuleConfig.from_dict(data) == cfg
    with pytest.raises(TypeError):
        StopRuleConfig.from_dict({**data, "bogus": 1})


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"k1": -1}, "k1"),
        ({"k1": 50, "k2": 40}, "k2"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"signal": "vibes"}, "signal"),
        ({"eps_len": -0.1}, "eps_len"),
        ({"eps_abort": 2.0}, "eps_abort"),
        ({"hysteresis": 0}, "hysteresis"),
        ({"check_every": 0}, "check_every"),
        ({"grace": -5}, "grace"),
    ],
)
def test_bad_config_raises_value_error_naming_key(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


def _feed_in_chunks(monitor, script, cuts, lean: bool):
    """Feed ``script`` through :meth:`StopAbortMonitor.advance`, one call per chunk ending at each of ``cuts``, the
    text of a check being the texts since the last one read; ``lean``: without log-probs until they are read, then
    with them from there on (a continued request). Returns (action, tokens seen, where the lean part ended)."""
    read = [0]

    def text_of(end):
        text, read[0] = "".join(t for t, _ in script[read[0] : end]), end
        return text

    def top_of(i):
        return script[i][1]

    resumed_at = None
    for cut in cuts:
        action = monitor.advance(cut, text_of, None if lean else top_of)
        if lean and action is Action.CONTINUE and monitor.tokens_seen < cut:  # reached a token whose log-probs are read
            assert monitor.reads_signal
            resumed_at, lean = monitor.tokens_seen, False
            action = monitor.advance(cut, text_of, top_of)
        if action is not Action.CONTINUE:
            return action, monitor.tokens_seen, resumed_at
    return Action.CONTINUE, monitor.tokens_seen, resumed_at


@pytest.mark.parametrize("lean", [False, True])
def test_advancing_per_output_decides_as_feeding_every_token(lean):
    """Random rules (with and without ARRoL's probe) and random streams cut into random outputs: :meth:`advance`
    takes the same decision at the same token, with the same record, as :meth:`on_token` fed every token; lean, it
    stops exactly at the first token whose log-probs the rule reads."""
    from duet_verl.core.probe import PROBE_FEATURES, ProbeRule

    rng = RolloutRandom(7)
    pieces = ["x", "yz", "\\bo", "xed{", "4", "}", " ", "ü"]
    for case in range(300):
        k1 = int(rng.uniform() * 30)
        probe = None
        if case % 3 == 0:
            keep = 0.5
            probe = ProbeRule(1 + int(rng.uniform() * 40), (0.0,) * len(PROBE_FEATURES), 0.0, keep, keep)
        cfg = config(
            k1=k1,
            k2=k1 + int(rng.uniform() * 40),
            min_tokens=int(rng.uniform() * 20),
            grace=int(rng.uniform() * 10),
            check_every=1 + int(rng.uniform() * 8),
            hysteresis=1 + int(rng.uniform() * 4),
            eps_len=0.3,
            eps_abort=0.3,
            seed=case,
            probe=probe,
            stop_abort=case % 7 != 0,
        )
        script = [
            (pieces[int(rng.uniform() * len(pieces))], CONFIDENT if rng.uniform() < 0.6 else UNSURE) for _ in range(120)
        ]
        reference = StopAbortMonitor(cfg)
        first_read = next((i for i in range(len(script)) if _reads_at(cfg, script, i)), None)
        expected = run(reference, script)
        cuts = sorted({1 + int(rng.uniform() * len(script)) for _ in range(int(rng.uniform() * 30))} | {len(script)})
        monitor = StopAbortMonitor(cfg)
        action, seen, resumed_at = _feed_in_chunks(monitor, script, cuts, lean)
        assert (action, seen) == expected and monitor.record == reference.record, case
        if lean and resumed_at is not None:
            assert resumed_at == first_read, case


def _reads_at(cfg, script, i) -> bool:
    """Whether a monitor fed the first ``i`` tokens of ``script`` one by one reads token ``i``'s log-probs (and has not
    decided before it)."""
    monitor = StopAbortMonitor(cfg)
    for text, top in script[:i]:
        if monitor.on_token(text, top) is not Action.CONTINUE:
            return False
    return monitor.reads_signal
