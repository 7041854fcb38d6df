import numpy as np
import pytest
import torch

from duet_verl.core.advantage import (
    duet_advantage,
    effective_sample_size,
    grpo_group_advantage,
    importance_weights,
    normalize_weights,
)
from duet_verl.core.allocator import allocate_rollouts, token_budget


def test_grpo_group_advantage_exact_values():
    scores = torch.tensor([1.0, 0.0, 1.0, 5.0, 2.0, 7.0])
    index = ["a", "a", "a", "b", "c", "c"]
    adv = grpo_group_advantage(scores, index, eps=0.0)
    mean_a, std_a = 2 / 3, np.std([1, 0, 1], ddof=1)
    np.testing.assert_allclose(adv[:3].numpy(), (np.array([1, 0, 1]) - mean_a) / std_a, rtol=1e-12)
    assert adv[3] == 0.0  # singleton -> zero by default
    np.testing.assert_allclose(adv[4:].numpy(), [-1 / np.std([2, 7], ddof=1) * 2.5, 2.5 / np.std([2, 7], ddof=1)])
    raw = grpo_group_advantage(scores, index, singleton="raw")
    assert raw[3] == 5.0  # stock verl behaviour
    unnorm = grpo_group_advantage(scores, index, norm_by_std=False)
    np.testing.assert_allclose(unnorm[:3].numpy(), np.array([1, 0, 1]) - mean_a)


def test_invalid_rows_are_excluded_from_group_statistics():
    scores = torch.tensor([1.0, 0.0, 100.0, 1.0])
    valid = torch.tensor([True, True, False, True])
    adv = grpo_group_advantage(scores, [0, 0, 0, 0], valid, eps=0.0)
    assert adv[2] == 0.0
    kept = np.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(adv[[0, 1, 3]].numpy(), (kept - kept.mean()) / kept.std(ddof=1))
    # a group reduced to one valid rollout is a singleton
    adv = grpo_group_advantage(torch.tensor([3.0, 9.0]), [0, 0], torch.tensor([True, False]))
    assert adv.tolist() == [0.0, 0.0]


def test_importance_weights_values_clamp_and_normalisation():
    p = torch.tensor([1.0, 0.5, 0.25, 0.01])
    kept = torch.tensor([False, True, False, True])
    w = importance_weights(p, kept, eps_abort=0.05, max_weight=1000.0)
    np.testing.assert_allclose(w.numpy(), [1.0, 40.0, 4.0, 1000.0])
    valid = torch.tensor([True, True, False, True])
    w = importance_weights(p, kept, eps_abort=0.05, max_weight=1000.0, valid=valid)
    assert w[2] == 0.0
    wn = normalize_weights(w, valid)
    assert float(wn[valid].mean()) == pytest.approx(1.0)
    assert effective_sample_size(torch.ones(10)) == pytest.approx(10.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="eps_abort"):
        importance_weights(p, kept, eps_abort=0.0, max_weight=1000.0)
    with pytest.raises(ValueError, match="p_pre"):
        importance_weights(torch.tensor([0.0]), torch.tensor([False]), eps_abort=0.05, max_weight=1000.0)
    with pytest.raises(ValueError, match="max_weight"):
        importance_weights(p, kept, eps_abort=0.05, max_weight=0.5)


def test_duet_advantage_masks_aborted_and_padding_and_weights_the_rest():
    rewards = torch.zeros(5, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float32)
    rewards[0, 1], rewards[2, 0], rewards[3, 3] = 1.0, 1.0, 1.0  # outcome reward on the last valid token
    out = duet_advantage(
        rewards,
        mask,
        index=["a", "a", "a", "a", "pad"],
        p_pre=torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0]),
        eps_kept=torch.tensor([False, False, False, True, False]),
        aborted=torch.tensor([False, True, False, False, False]),
        padding=torch.tensor([False, False, False, False, True]),
        eps_abort=0.05,
    )
    assert out.response_mask[1].sum() == 0 and out.response_mask[4].sum() == 0
    assert torch.all(out.advantages[1] == 0) and torch.all(out.advantages[4] == 0)
    # group a by default: the aborted row counts as a failure, scores [1, 0, 1, 1]: mean 0.75, std 0.5
    np.testing.assert_allclose(out.scalar_advantages.numpy(), [2 * 0.5, 0.0, 2 * 0.5, 40 * 0.5, 0.0], rtol=1e-5)
    torch.testing.assert_close(out.advantages, out.scalar_advantages.unsqueeze(-1).float() * out.response_mask)
    np.testing.assert_allclose(out.weights.numpy(), [2.0, 0.0, 2.0, 40.0, 0.0])
    assert out.metrics["valid_fraction"] == pytest.approx(0.6) and out.metrics["gradient_rows"] == 3
    assert out.metrics["max_weight"] == 40.0
    assert out.metrics["ess"] == pytest.approx(44.0**2 / (4 + 4 + 1600))
    assert out.metrics["max_row_share"] == pytest.approx(80 / (2 + 1 + 80))  # |w A| * tokens: 1*2, 1*1, 20*4
    # the previous rule, behind a setting: aborted rows are left out, group a is all correct -> no signal
    out = duet_advantage(
        rewards,
        mask,
        index=["a", "a", "a", "a", "pad"],
        p_pre=torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0]),
        eps_kept=torch.tensor([False, False, False, True, False]),
        aborted=torch.tensor([False, True, False, False, False]),
        padding=torch.tensor([False, False, False, False, True]),
        aborted_baseline="exclude",
    )
    assert torch.all(out.advantages == 0) and out.metrics["gradient_rows"] == 0 and out.metrics["ess"] == 0.0
    with pytest.raises(ValueError, match="aborted_baseline"):
        duet_advantage(rewards, mask, [0] * 5, aborted_baseline="drop")


def test_score_ignores_the_mask_like_verl_so_a_stopped_rollout_keeps_its_reward():
    """verl puts the reward on the last response position, which is the masked end-of-turn token of a stopped
    rollout: the score must be the unmasked sum (as verl's GRPO), or every stopped rollout scores 0."""
    rewards = torch.zeros(4, 5)
    rewards[:, -1] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    mask = torch.ones(4, 5)
    mask[:2, -1] = 0  # rows 0, 1 were stopped: synthetic end-of-turn masked out
    out = duet_advantage(rewards, mask, ["g"] * 4)
    assert out.scores.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert torch.all(out.advantages == 0)  # four correct answers: no signal, not (-0.87, -0.87, +0.87, +0.87)
    rewards[3, -1] = 0.0  # one wrong (natural) answer: stopped and natural correct answers are treated alike
    out = duet_advantage(rewards, mask, ["g"] * 4)
    a = out.scalar_advantages
    assert a[0] == a[1] == a[2] > 0 > a[3]


def test_aborted_failures_give_a_lonely_rollout_a_baseline_and_self_normalisation_uses_gradient_rows():
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mask = torch.ones(4, 2)
    aborted = torch.tensor([False, True, False, False])
    index = ["a", "a", "b", "b"]
    out = duet_advantage(rewards, mask, index, aborted=aborted)
    # group a: one valid rollout plus one failure -> a real baseline; group b: all correct -> no signal
    assert out.scalar_advantages[0] > 0 and out.scalar_advantages[2] == out.scalar_advantages[3] == 0
    out = duet_advantage(rewards, mask, index, aborted=aborted, aborted_baseline="exclude")
    assert out.scalar_advantages[0] == 0  # a group of one
    p_pre = torch.tensor([0.25, 0.25, 1.0, 1.0])
    out = duet_advantage(rewards, mask, index, p_pre=p_pre, aborted=aborted, self_normalize=True)
    # only row 0 carries gradient: its weight is normalised to 1, whatever rows 2 and 3 weigh
    assert out.weights[0] == pytest.approx(1.0) and out.metrics["mean_weight"] == pytest.approx(1.0)
    assert out.metrics["ess_fraction"] == pytest.approx(1.0) and out.metrics["max_row_share"] == pytest.approx(1.0)


def test_duet_advantage_defaults_reduce_to_grpo():
    torch.manual_seed(0)
    rewards = torch.zeros(8, 3)
    rewards[:, -1] = torch.randint(0, 2, (8,)).float()
    mask = torch.ones(8, 3)
    index = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = duet_advantage(rewards, mask, index)
    expected = grpo_group_advantage(rewards.sum(-1), index)
    torch.testing.assert_close(out.advantages, (expected.unsqueeze(-1) * mask).float())
    torch.testing.assert_close(out.returns, out.advantages)
    assert out.advantages.dtype == rewards.dtype


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        duet_advantage(torch.zeros(2, 3), torch.zeros(2, 4), [0, 0])
    with pytest.raises(ValueError, match="index"):
        grpo_group_advantage(torch.zeros(3), [0, 0])
    with pytest.raises(ValueError, match="singleton"):
        grpo_group_advantage(torch.zeros(2), [0, 0], singleton="mean")


# ---- Monte Carlo: the weighted estimator is unbiased under the allocation gate and the abort lottery ----


def _simulate(cap_propensity: bool, weighted: bool, trials: int = 20000, seed: int = 0):
    """Toy policy gradient: each rollout contributes g; the target is the uniform-prompt objective.

    Prompt q's rollouts are "at risk" (no marker by the deadline) with probability a_q; at-risk rollouts
    have a different mean contribution, so dropping them without reweighting biases the estimate.
    Returns (estimates per trial, true value).
    """
    rng = np.random.default_rng(seed)
    scores = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 0.3])
    lengths = np.array([200.0, 400.0, 300.0, 800.0, 500.0, 100.0])
    alloc = allocate_rollouts(scores, lengths, token_budget(lengths, 8, 0.5), cap_propensity=cap_propensity)
    n, p_pre = alloc.n, alloc.p_pre
    assert p_pre.min() > 0.05  # no floor clamping in this toy
    risk = np.array([0.1, 0.3, 0.5, 0.7, 0.2, 0.9])
    mu_safe = np.array([1.0, -0.5, 2.0, 0.3, -1.0, 0.8])
    mu_risk = np.array([-2.0, 1.5, -1.0, -0.7, 2.0, -3.0])
    truth = float(np.sum(risk * mu_risk + (1 - risk) * mu_safe))
    prompt = np.repeat(np.arange(6), n)  # one column per rollout
    eps_abort = 0.05
    at_risk = rng.random((trials, prompt.size)) < risk[prompt]
    g = np.where(at_risk, mu_risk[prompt], mu_safe[prompt]) + rng.normal(size=(trials, prompt.size))
    lottery_keep = rng.random((trials, prompt.size)) < eps_abort
    eps_kept = at_risk & lottery_keep
    aborted = at_risk & ~lottery_keep
    valid = torch.as_tensor(~aborted)
    if weighted:
        w = importance_weights(
            torch.as_tensor(np.broadcast_to(p_pre[prompt], g.shape).copy()),
            torch.as_tensor(eps_kept),
            eps_abort,
            max_weight=1e9,
            valid=valid,
        ).numpy()
    else:
        w = (~aborted).astype(np.float64)
    estimates = (w * g).sum(axis=1) / n.mean()
    return estimates, truth, n


def test_weighted_estimator_is_unbiased_monte_carlo():
    est, truth, n = _simulate(cap_propensity=False, weighted=True)
    assert len(set(n.tolist())) > 2  # a genuinely unequal allocation
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - truth) < 4 * se


def test_unweighted_estimator_is_biased_so_the_test_can_fail():
    est, truth, _ = _simulate(cap_propensity=False, weighted=False)
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - truth) > 20 * se


def test_capped_propensity_over_counts_prompts_above_mean_allocation():
    est, truth, n = _simulate(cap_propensity=True, weighted=True)
    assert n.max() > n.mean()
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - truth) > 5 * se  # documented: the paper's cap trades unbiasedness for priority


def test_row_share_cap_bounds_one_rows_influence():
    from duet_verl.core.advantage import row_share_cap_weights

    # two groups of two: an eps-kept winner (weight 20) and three ordinary rows, all of length 10
    rewards = torch.zeros(4, 10)
    rewards[0, -1] = 1.0
    rewards[2, -1] = 1.0
    mask = torch.ones(4, 10)
    kept = torch.tensor([True, False, False, False])
    free = duet_advantage(rewards, mask, ["a", "a", "b", "b"], eps_kept=kept)
    assert free.metrics["max_row_share"] > 0.8 and free.metrics["capped_rows"] == 0.0
    capped = duet_advantage(rewards, mask, ["a", "a", "b", "b"], eps_kept=kept, row_share_cap=0.4)
    assert capped.metrics["max_row_share"] == pytest.approx(0.4)
    assert capped.metrics["capped_rows"] == 1.0
    torch.testing.assert_close(capped.weights[1:], free.weights[1:])  # the others keep their weights
    # fewer rows than 1 / cap: equal shares
    w, k = row_share_cap_weights(
        torch.tensor([5.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([True, True]), 0.1
    )
    assert k >= 1 and float(w[0]) == pytest.approx(float(w[1]))
