import json
import math

import numpy as np
import pytest

from duet_verl.core.surrogate import OnlineRidge, PromptSurrogate, group_signal_std, pearson

# the reference's grad_trace surrogate: a plain running mean of sigma_t, no shrinkage, no forgetting
REFERENCE = {"signal": "grad_trace", "pseudo_count": 0.0, "decay": 1.0}


def test_ridge_recovers_linear_relation_and_shrinks_to_prior_without_data():
    ridge = OnlineRidge(num_features=1, l2=1e-6, prior=[0.5, 0.0])
    np.testing.assert_allclose(ridge.predict(np.array([[3.0]])), [0.5])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 1))
    y = 2.0 - 3.0 * x[:, 0] + rng.normal(scale=0.01, size=500)
    for chunk in range(0, 500, 50):  # streamed in pieces = batch fit
        ridge.update(x[chunk : chunk + 50], y[chunk : chunk + 50])
    np.testing.assert_allclose(ridge.weights, [2.0, -3.0], atol=0.01)
    assert ridge.count == 500


def test_ridge_strong_prior_dominates_few_points_and_ignores_nan_rows():
    ridge = OnlineRidge(num_features=1, l2=1e6, prior=[1.0, 2.0])
    ridge.update(np.array([[0.0], [np.nan]]), np.array([100.0, 5.0]))
    assert ridge.count == 1
    np.testing.assert_allclose(ridge.weights, [1.0, 2.0], atol=1e-3)


def test_cold_warm_and_lengths():
    sur = PromptSurrogate(default_length=3072, sigma_min=0.01, k_warmup=2, ridge_prior=[0.3, 0.0], **REFERENCE)
    pred = sur.predict(["a", "b"])
    np.testing.assert_allclose(pred.scores, [0.3, 0.3])
    np.testing.assert_allclose(pred.lengths, [3072, 3072])
    assert pred.cold.all()
    sur.update(["a"], np.array([2.0]), [[100, 300]])
    pred = sur.predict(["a", "b"])
    assert pred.cold.all()  # one observation < k_warmup=2
    np.testing.assert_allclose(pred.lengths, [200, 200])  # b: global window mean
    sur.update(["a"], np.array([4.0]), [[400]])
    pred = sur.predict(["a", "b"])
    assert not pred.cold[0] and pred.cold[1]
    assert pred.scores[0] == pytest.approx(3.0)  # Welford mean of 2 and 4
    assert pred.lengths[0] == pytest.approx(800 / 3)
    sur.update(["a"], np.array([0.0]), [[]])  # zero observed sigma is floored at sigma_min
    sur.update(["a"], np.array([0.0]), [[]])
    sur.update(["a"], np.array([0.0]), [[]])
    sur.update(["a"], np.array([-6.0 + 6.0]), [[]])
    assert sur.predict(["a"]).scores[0] == pytest.approx(max(0.01, 6.0 / 6))


def test_sigma_floor_and_nan_sigma_is_not_an_observation():
    sur = PromptSurrogate(default_length=100, sigma_min=0.5, k_warmup=1, **REFERENCE)
    sur.update(["p"], np.array([np.nan]), [[10]])
    assert sur.observations("p") == 0
    sur.update(["p"], np.array([0.1]), [[10]])
    assert sur.predict(["p"]).scores[0] == 0.5


def test_online_ridge_learns_cold_start_from_features():
    rng = np.random.default_rng(1)
    sur = PromptSurrogate(default_length=100, sigma_min=0.0, k_warmup=1, ridge_l2=1e-3, **REFERENCE)
    for step in range(20):
        ids = [f"train-{step}-{i}" for i in range(32)]
        f = rng.uniform(-3, 0, size=(32, 1))
        sur.update(ids, 1.0 - 0.5 * f[:, 0], [[50]] * 32, features=f)
    new = sur.predict(["new-1", "new-2"], features=np.array([[-2.0], [np.nan]]))
    assert new.scores[0] == pytest.approx(2.0, abs=1e-3)
    # missing feature -> median of recent features (uniform(-3,0) median ~ -1.5) -> ~1.75
    assert new.scores[1] == pytest.approx(1.75, abs=0.1)


def test_lru_bound_evicts_least_recently_updated():
    sur = PromptSurrogate(default_length=10, max_prompts=3)
    for pid in "abc":
        sur.update([pid], np.array([1.0]), [[1]])
    sur.update(["a"], np.array([1.0]), [[1]])  # refresh a
    sur.update(["d"], np.array([1.0]), [[1]])  # evicts b
    assert len(sur) == 3
    assert sur.observations("b") == 0 and sur.observations("a") == 2


def test_state_dict_round_trips_exactly_through_json():
    rng = np.random.default_rng(2)
    sur = PromptSurrogate(default_length=512, sigma_min=0.02, k_warmup=1, max_prompts=40, length_window=16)
    for step in range(10):
        ids = [f"q{int(i)}" for i in rng.integers(0, 60, 12)]
        sig = rng.gamma(2, 1, 12)
        sig[rng.random(12) < 0.2] = np.nan
        lengths = [list(rng.integers(10, 500, rng.integers(0, 4))) for _ in ids]
        sur.update(ids, sig, lengths, features=rng.normal(size=(12, 1)))
    state = json.loads(json.dumps(sur.state_dict()))
    clone = PromptSurrogate(default_length=512, sigma_min=0.02, k_warmup=1, max_prompts=40, length_window=16)
    assert clone.load_state_dict(state) == {}  # same settings: nothing differs
    assert clone.state_dict() == sur.state_dict()
    other = PromptSurrogate(default_length=1)  # other settings: learned state only, and the differences
    assert set(other.load_state_dict(state)) == {"default_length", "sigma_min", "max_prompts", "length_window"}
    assert other.state_dict()["config"] == PromptSurrogate(default_length=1).state_dict()["config"]
    assert other.state_dict()["prompts"] == state["prompts"][-len(other.state_dict()["prompts"]) :]
    probe = [f"q{i}" for i in range(70)]
    feats = rng.normal(size=(70, 1))
    a, b = sur.predict(probe, feats), clone.predict(probe, feats)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    # and both continue identically
    for s in (sur, clone):
        s.update(["q1", "zz"], np.array([0.7, 0.9]), [[5], [6]], features=np.array([[0.1], [0.2]]))
    assert clone.state_dict() == sur.state_dict()


def test_ridge_file(tmp_path):
    path = tmp_path / "ridge.json"
    path.write_text(json.dumps({"intercept": 0.2, "coef": [-0.1], "sigma_min": 0.05}))
    sur = PromptSurrogate.from_ridge_file(path, default_length=100, signal="grad_trace")
    assert sur.sigma_min == 0.05
    assert sur.predict(["x"], np.array([[-4.0]])).scores[0] == pytest.approx(0.6)
    path.write_text(json.dumps({"coef": [1]}))
    with pytest.raises(ValueError, match="intercept"):
        PromptSurrogate.from_ridge_file(path, default_length=100)


def test_group_signal_std_matches_definition():
    adv = np.array([1.0, -1.0, 0.5, 2.0, 3.0, 9.0])
    lp = np.array([-10.0, -20.0, -5.0, -1.0, -1.0, -1.0])
    groups = ["a", "a", "a", "b", "b", "c"]
    kept = np.array([True, True, True, True, False, True])
    out = group_signal_std(adv, lp, groups, kept)
    assert set(out) == {"a"}  # b has one kept rollout, c one rollout
    assert out["a"] == pytest.approx(np.std([-10.0, 20.0, -2.5]))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"default_length": 0}, "default_length"),
        ({"default_length": math.inf}, "default_length"),
        ({"sigma_min": -1.0}, "sigma_min"),
        ({"k_warmup": 0}, "k_warmup"),
        ({"max_prompts": 0}, "max_prompts"),
        ({"length_window": 0}, "length_window"),
        ({"ridge_l2": 0.0}, "l2"),
        ({"ridge_prior": [1.0]}, "prior"),
        ({"ridge_decay": 0.0}, "decay"),
        ({"num_features": 0}, "num_features"),
    ],
)
def test_bad_arguments(kw, match):
    args = {"default_length": 10}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        PromptSurrogate(**args)


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1], [1, 2]))


def test_pass_rate_signal_follows_the_posterior_and_never_reaches_zero():
    sur = PromptSurrogate(default_length=100, signal="pass_rate", decay=1.0, prior_strength=2.0, sigma_min=0.0)
    ids = ["mixed", "solved", "single"]
    sur.update(ids, np.full(3, np.nan), [[10] * 8, [10] * 8, [10]], rewards=[[1, 0] * 4, [1] * 8, [0]])
    pred = sur.predict(ids + ["new"])
    assert pred.cold.tolist() == [False, False, False, True]
    assert pred.scores[0] > pred.scores[3] > pred.scores[1] > 0  # uncertain > unseen > solved, never 0
    # E[p(1-p)] of the Beta posterior; the prior is centred on the population: 12 of 17 rollouts passed
    centre = (12 + 0.5) / (17 + 1)
    a, b = 2 * centre + 4, 2 * (1 - centre) + 4
    assert pred.scores[0] == pytest.approx(a * b / ((a + b) * (a + b + 1)))
    assert sur.pass_rate(["mixed"])[0] == pytest.approx(a / (a + b))
    scaled = PromptSurrogate(default_length=100, decay=1.0, prior_strength=2.0, sigma_min=0.0, length_scale=True)
    scaled.load_state_dict(sur.state_dict())
    np.testing.assert_allclose(scaled.predict(ids).scores, sur.predict(ids).scores * 10.0)


def test_decay_and_shrinkage_free_a_zero_sigma():
    ref = PromptSurrogate(default_length=100, sigma_min=0.0, ridge_prior=[1.0, 0.0], **REFERENCE)
    new = PromptSurrogate(default_length=100, sigma_min=0.0, ridge_prior=[1.0, 0.0], signal="grad_trace")
    for sur in (ref, new):
        sur.update(["p"], np.array([0.0]), [[10]])
    assert ref.predict(["p"]).scores[0] == 0.0  # the zero-variance trap
    assert new.predict(["p"]).scores[0] == pytest.approx(new.pseudo_count / (new.pseudo_count + 1))
    new.update(["p"], np.array([2.0]), [[10]])  # decayed: the newer observation weighs more
    d, k = new.decay, new.pseudo_count
    assert new.predict(["p"]).scores[0] == pytest.approx((k * 1.0 + 2.0) / (k + 1 + d))


def test_old_checkpoint_records_are_upgraded():
    sur = PromptSurrogate(default_length=100, **REFERENCE)
    sur.update(["p"], np.array([3.0]), [[10]])
    state = sur.state_dict()
    state["prompts"] = [[pid, rec[:5]] for pid, rec in state["prompts"]]
    del state["pass"]
    clone = PromptSurrogate(default_length=100, **REFERENCE)
    clone.load_state_dict(state)
    assert clone.predict(["p"]).scores[0] == pytest.approx(3.0)
