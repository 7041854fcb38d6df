import numpy as np
import pytest

from duet_verl.core.gates import GateEstimator, censored_quantiles, stop_thresholds


def test_initial_gates_and_update_cadence():
    gates = GateEstimator(cap=3072)
    assert (gates.k1, gates.k2) == (921, 2150)
    gates.observe(np.arange(100, 1100, 10))  # 100 lengths
    assert [gates.step() for _ in range(10)] == [False] * 9 + [True]
    lengths = np.arange(100, 1100, 10)
    assert gates.k1 == int(np.quantile(lengths, 0.3))
    assert gates.k2 == int(np.quantile(lengths, 0.8))


def test_gates_wait_for_enough_samples_and_respect_floors():
    gates = GateEstimator(cap=1000, update_every=1, min_samples=32)
    gates.observe([5] * 31)
    assert not gates.step()
    gates.observe([5])
    assert gates.step()
    assert gates.k1 == 32 and gates.k2 == 82  # floor 32, gap 50
    gates = GateEstimator(cap=60, update_every=1, min_samples=1)
    gates.observe([59] * 40)
    gates.step()
    assert gates.k1 == 59 and gates.k2 == 60  # capped


def test_gate_state_round_trip():
    gates = GateEstimator(cap=500, window=8, update_every=2, min_samples=4)
    gates.observe(range(20))
    gates.step()
    clone = GateEstimator(cap=500, window=8, update_every=2, min_samples=4)
    clone.load_state_dict(gates.state_dict())
    assert clone.state_dict() == gates.state_dict()
    assert clone.step() == gates.step() and (clone.k1, clone.k2) == (gates.k1, gates.k2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cap": 0}, "cap"),
        ({"k1_init": 0.9}, "k1_init"),
        ({"q1": 1.5}, "q1"),
        ({"window": 0}, "window"),
        ({"q1": 0.9, "q2": 0.1}, "q1"),
    ],
)
def test_gate_bad_args(kw, match):
    args = {"cap": 100}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        GateEstimator(**args)


def test_batch_percentile_thresholds_follow_info_rate_rank():
    scores = np.array([1.0, 3.0, 2.0, 2.0])
    lengths = np.array([1.0, 1.0, 1.0, 1.0])
    th = stop_thresholds(scores, lengths, "batch_percentile")
    np.testing.assert_allclose(th, [0.5, 0.99, 0.745, 0.745])  # ties share the mean rank


def test_linear_and_log_modes_are_monotone_in_info_rate_and_bounded():
    rng = np.random.default_rng(0)
    s, length = rng.gamma(2, 1, 200), rng.uniform(10, 1000, 200)
    rate = s**2 / length
    for mode in ("batch_percentile", "linear", "log_scale"):
        th = stop_thresholds(s, length, mode)
        assert th.min() == pytest.approx(0.5) and th.max() == pytest.approx(0.99)
        order = np.argsort(rate)
        assert np.all(np.diff(th[order]) >= -1e-12)


def test_degenerate_batches_get_the_midpoint():
    np.testing.assert_allclose(stop_thresholds([2.0], [10.0]), [0.745])
    np.testing.assert_allclose(stop_thresholds([1.0, 1.0], [5.0, 5.0], "linear"), [0.745, 0.745])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([1.0], [1.0], "median"), "mode"),
        (([1.0], [0.0]), "expected_lengths"),
        (([1.0, 2.0], [1.0]), "1-D"),
        (([np.nan], [1.0]), "scores"),
    ],
)
def test_threshold_bad_args(args, match):
    with pytest.raises(ValueError, match=match):
        stop_thresholds(*args)


def test_censored_quantiles_are_kaplan_meier():
    x = np.arange(1, 11, dtype=float)
    # no censoring: the empirical (step) quantile
    assert censored_quantiles(x, np.zeros(10, bool), (0.3, 0.8)) == [3.0, 8.0]
    # 7..10 censored at 7: nothing is known above 7 except that those rollouts were longer -> lower bound
    cut = x >= 7
    assert censored_quantiles(np.minimum(x, 7), cut, (0.3, 0.8)) == [3.0, 7.0]
    # one censoring in the middle moves later events up: S drops by 1/at_risk after it
    lengths, cut = np.array([1.0, 2.0, 3.0, 4.0]), np.array([False, True, False, False])
    assert censored_quantiles(lengths, cut, (0.5, 0.6, 0.7)) == [3.0, 3.0, 4.0]  # F = .25, .25, .625, 1


def test_censored_gates_do_not_drift_down_under_aborts():
    """Lengths ~ U(100, 1000); each refresh aborts (with probability 0.95) what runs past K2 + grace."""
    rng = np.random.default_rng(0)
    k2 = {}
    for censored in (True, False):
        gates = GateEstimator(cap=1000, update_every=1, min_samples=32, window=2000, censored=censored)
        for _ in range(30):
            lengths = rng.uniform(100, 1000, 400)
            deadline = gates.k2 + 150
            aborted = (lengths > deadline) & (rng.random(400) > 0.05)
            gates.observe(np.where(aborted, deadline, lengths), censored=aborted)
            gates.step()
        k2[censored] = gates.k2
    assert abs(k2[True] - 820) < 40  # the true 80th percentile is 820
    assert k2[False] < k2[True] - 60  # kept lengths only: biased down (a fixed point just above K2 + grace's pull)


def test_old_gate_state_without_flags_loads():
    gates = GateEstimator(cap=500)
    gates.load_state_dict({"k1": 10, "k2": 80, "steps": 3, "lengths": [1, 2, 3]})
    assert gates.state_dict()["censored"] == [False] * 3
