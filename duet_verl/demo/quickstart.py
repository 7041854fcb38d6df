"""``duet-verl quickstart``: DUET vs GRPO on a tiny model, on the CPU, through verl's own V1 trainer.

1. Builds assets locally (nothing downloaded): a byte-level tokenizer, a small Qwen2-architecture model
   given a short supervised warm start on worked solutions, and train/held-out parquet files of the
   synthetic tasks in :mod:`duet_verl.demo.tasks`. Warm-start, RL and held-out problems are disjoint; every
   held-out sample has a fixed vLLM seed (``duet_sampling_seed``), so the same model always scores the same
   on the CPU (GPU kernels are not batch-invariant: there a seed fixes the sampling draws, not every logit).
2. Runs each policy with ``python -m duet_verl.main`` (same seeds, same steps): ``grpo@1.0`` is GRPO with
   ``G`` rollouts per prompt, ``grpo@B`` GRPO with ``round(B*G)``, ``duet@B`` DUET at budget ``B``
   (``duet-alloc@B``: allocation only, no stop/abort).
3. Evaluates on the held-out prompts (verl's validation, before training and at a few points) and writes
   ``summary.json``, ``accuracy_vs_tokens.png`` and per-policy logs into ``--out``; prints a table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from duet_verl.cpu.overrides import CPU_ENV

__all__ = ["METHODS", "Policy", "QuickstartConfig", "aggregate_runs", "parse_policy", "run_quickstart"]


# grpo: GRPO with round(b * G) rollouts; grpo-aa: the same with other seeds (data order, sampling), the A/A arm that
# sizes the noise; duet: allocation + stop/abort; duet-alloc: allocation only; duet-stop: stop/abort only; the
# budget-aware baselines run as duet.policy through DUET's trainer at the same token budget (BASELINES).
BASELINES = ("uniform", "greso", "vip", "arrol")
# the baselines' settings sized for the quickstart's short rollouts and 16 steps (the defaults are the papers'): ARRoL
# scores a rollout after 16 tokens instead of 512, and trains its head for 4 steps instead of 20 before pruning
BASELINE_OVERRIDES = {"arrol": ["duet.arrol.detect_at=16", "duet.arrol.warmup_steps=4"]}
METHODS = ("grpo", "grpo-aa", "duet", "duet-alloc", "duet-stop", *BASELINES)
AA_SEED_OFFSET = 1000
DEVICES = ("cpu", "cuda")
RUN_RECORD = "run.json"  # a finished run's summary and the command that produced it


@dataclass(frozen=True)
class Policy:
    """A method and its token budget fraction."""

    method: str  # one of METHODS
    budget: float

    @property
    def name(self) -> str:
        """``method@budget``."""
        return f"{self.method}@{self.budget:g}"


def parse_policy(text: str) -> Policy:
    """``"duet@0.5"`` → ``Policy("duet", 0.5)``."""
    method, _, budget = text.strip().partition("@")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} in policy {text!r} ({', '.join(METHODS)})")
    try:
        value = float(budget or 1.0)
    except ValueError as err:
        raise ValueError(f"bad budget in policy {text!r}") from err
    if not 0 < value <= 1:
        raise ValueError(f"budget must be in (0, 1] in policy {text!r}")
    return Policy(method, value)


@dataclass
class QuickstartConfig:
    """Sizes of the quickstart; the defaults finish in well under 30 minutes on 2 cores."""

    out: str = "duet_quickstart"
    steps: int = 16
    tasks: list[str] = field(default_factory=lambda: ["arith", "search", "copy"])
    policies: list[str] = field(default_factory=lambda: ["grpo@1.0", "duet@0.5", "grpo@0.5"])
    seed: int = 0
    seeds: int = 1  # paired seeds seed, seed+1, ...: 1 is a demo; N >= 2 gives means, 95 % intervals, paired diffs
    prompts_per_step: int = 16
    group_size: int = 8
    response_length: int = 128
    train_problems: int = 128  # a small pool: prompts come back (2 epochs by default), as in the paper's 4
    val_problems: int = 256  # held out; each sample has a fixed vLLM seed, so re-evaluating a model repeats exactly
    evals: int = 4
    val_samples: int = 4  # held-out accuracy is mean@val_samples
    warm_start_problems: int = 256  # disjoint from the RL pool and the held-out set
    warm_start_steps: int = 250
    hidden: int = 128  # 4 heads of 32: vLLM's CPU attention needs a head size of 32 or more
    layers: int = 3
    lr: float = 2e-4
    device: str = "cpu"  # cpu | cuda: where verl trains and vLLM generates (DEVICES)


def _log(message: str) -> None:
    print(f"[quickstart] {message}", flush=True)


def problem_splits(cfg: QuickstartConfig) -> dict[str, list]:
    """The disjoint held-out (``val``), RL (``train``) and warm-start (``warm``) problems; ``ValueError`` when the
    tasks have too few distinct problems for these sizes (``search`` alone has 360)."""
    from duet_verl.demo.tasks import make_splits

    sizes = {"val": cfg.val_problems, "train": cfg.train_problems, "warm": cfg.warm_start_problems}
    return make_splits(cfg.tasks, sizes, seed=cfg.seed)


def build_assets(cfg: QuickstartConfig, out: Path) -> dict[str, str]:
    """Tokenizer + warm-started model + parquet files under ``out/assets`` (reused if already built)."""
    import torch

    from duet_verl.core.protocol import SAMPLING_SEED_COLUMN
    from duet_verl.core.rng import rollout_seed
    from duet_verl.demo.assets import build_tiny_model, build_tokenizer
    from duet_verl.demo.tasks import write_parquet
    from duet_verl.demo.warm_start import warm_start
    from duet_verl.tools.score_prompts import prompt_mean_logprobs

    assets = out / "assets"
    key = json.dumps(
        {
            k: getattr(cfg, k)
            for k in (
                "tasks",
                "seed",
                "train_problems",
                "val_problems",
                "warm_start_problems",
                "warm_start_steps",
                "hidden",
                "layers",
            )
        },
        sort_keys=True,
    )
    stamp = assets / "assets.json"
    paths = {"model": str(assets / "model"), "train": str(assets / "train.parquet"), "val": str(assets / "val.parquet")}
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        _log(f"reusing assets in {assets}")
        return paths
    assets.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    splits = problem_splits(cfg)
    train, val = splits["train"], splits["val"]
    _log(
        f"warm start: {sum(p.numel() for p in model.parameters()):,} parameters, {cfg.warm_start_steps} steps on "
        f"{len(splits['warm'])} problems disjoint from the {len(train)} RL and {len(val)} held-out ones"
    )
    losses = warm_start(model, tokenizer, splits["warm"], cfg.warm_start_steps, seed=cfg.seed, progress=_log)
    model.save_pretrained(paths["model"])
    tokenizer.save_pretrained(paths["model"])
    # DUET's cold-start feature, as `duet-verl score-prompts` would write it
    prompts = [[{"role": "user", "content": p.prompt}] for p in train]
    features = prompt_mean_logprobs(model, tokenizer, prompts, batch_size=64)
    write_parquet(train, paths["train"], "train", extra_columns={"duet_prompt_logprob": features})
    start = len(train)
    eval_seeds = [rollout_seed(cfg.seed, 0, f"eval/{start + i}") >> 1 for i in range(len(val))]
    write_parquet(val, paths["val"], "test", start_index=start, extra_columns={SAMPLING_SEED_COLUMN: eval_seeds})
    stamp.write_text(json.dumps({"key": key, "warm_start_final_loss": losses[-1] if losses else None}))
    return paths


def device_overrides(device: str) -> list[str]:
    """The runtime overrides of a quickstart-sized run on ``device`` (one of :data:`DEVICES`)."""
    from duet_verl.cpu.overrides import cpu_overrides, gpu_overrides

    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    return cpu_overrides() if device == "cpu" else gpu_overrides()


def policy_overrides(policy: Policy, cfg: QuickstartConfig, paths: dict[str, str], run_dir: Path) -> list[str]:
    """Hydra overrides of one policy's run (the device's runtime settings included)."""
    from duet_verl.core.policies.duet import grpo_count
    from duet_verl.demo.reward import __file__ as reward_file

    grpo = policy.method.startswith("grpo")
    n = cfg.group_size if not grpo else grpo_count(policy.budget, cfg.group_size)
    seed = cfg.seed + (AA_SEED_OFFSET if policy.method == "grpo-aa" else 0)
    test_freq = max(1, math.ceil(cfg.steps / max(cfg.evals, 1)))
    common = [
        f"data.train_files={paths['train']}",
        f"data.val_files={paths['val']}",
        f"data.train_batch_size={cfg.prompts_per_step}",
        "data.max_prompt_length=64",
        f"data.max_response_length={cfg.response_length}",
        f"data.seed={seed}",
        f"actor_rollout_ref.model.path={paths['model']}",
        f"actor_rollout_ref.actor.optim.lr={cfg.lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={cfg.prompts_per_step}",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.rollout.temperature=0.9",
        "actor_rollout_ref.rollout.top_p=0.95",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=16384",
        "actor_rollout_ref.rollout.val_kwargs.temperature=0.9",
        "actor_rollout_ref.rollout.val_kwargs.top_p=0.95",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        f"actor_rollout_ref.rollout.val_kwargs.n={cfg.val_samples}",
        f"reward.custom_reward_function.path={reward_file}",
        "reward.custom_reward_function.name=compute_score",
        "trainer.logger=[console,file]",
        "trainer.val_before_train=True",
        f"trainer.test_freq={test_freq}",
        f"trainer.total_training_steps={cfg.steps}",
        "trainer.save_freq=-1",
        "trainer.project_name=duet_quickstart",
        f"trainer.experiment_name={policy.name}",
        f"trainer.validation_data_dir={run_dir / 'validation'}",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={run_dir / 'metrics.jsonl'}",
        f"duet.seed={seed}",
        *device_overrides(cfg.device),
    ]
    if grpo:
        return [*common, "duet.enable=false", "algorithm.adv_estimator=grpo"]
    if policy.method in BASELINES:
        sized = BASELINE_OVERRIDES.get(policy.method, [])
        return [*common, "duet.enable=true", f"duet.budget={policy.budget}", f"duet.policy={policy.method}", *sized]
    duet = [
        "duet.enable=true",
        f"duet.budget={policy.budget}",
        "duet.stop.min_tokens=16",
        "duet.stop.grace=16",
        "duet.gates.update_every=2",
        f"duet.stop.enable={'false' if policy.method == 'duet-alloc' else 'true'}",
        f"duet.allocate={'false' if policy.method == 'duet-stop' else 'true'}",
    ]
    return [*common, *duet]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of verl's file logger (``{"step": N, "data": {...}}`` per line)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().split("\n"):  # not splitlines(): U+2028 and friends can sit inside a string
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _generations(file: Path) -> list[dict[str, Any]]:
    """verl's dumped validation generations (JSON lines; a generation may hold U+2028, which splitlines() splits)."""
    return [json.loads(line) for line in file.read_text().split("\n") if line.strip()]


def validation_accuracy(run_dir: Path) -> dict[int, float]:
    """Held-out accuracy by step, from verl's dumped validation generations (``{step}.jsonl``)."""
    out = {}
    for file in sorted((run_dir / "validation").glob("*.jsonl")):
        scores = [float(g.get("score", 0.0)) for g in _generations(file)]
        if scores:
            out[int(file.stem)] = sum(scores) / len(scores)
    return out


def heldout_profile(file: Path) -> dict[str, float]:
    """What the held-out set asks of a model at one evaluation: the share of prompts it never / always solves (too
    hard / too easy for it) and the share of samples with no boxed answer or with text after the answer."""
    from duet_verl.demo.reward import text_after_answer

    generations = _generations(file)
    by_prompt: dict[str, list[float]] = {}
    for g in generations:
        by_prompt.setdefault(g["input"], []).append(float(g.get("score", 0.0)))
    after = [text_after_answer(g["output"]) for g in generations]
    return {
        "prompts": len(by_prompt),
        "never_solved": sum(max(v) == 0 for v in by_prompt.values()) / len(by_prompt),
        "always_solved": sum(min(v) == 1 for v in by_prompt.values()) / len(by_prompt),
        "no_answer": sum(rest is None for rest in after) / len(generations),
        "talks_after_answer": sum(bool(rest) for rest in after) / len(generations),
    }


def run_policy(policy: Policy, cfg: QuickstartConfig, paths: dict[str, str], run_dir: Path) -> dict[str, Any]:
    """Train one policy (seed ``cfg.seed``) in a subprocess writing to ``run_dir``, printing progress; returns its
    summary entry."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "duet_verl.main", *policy_overrides(policy, cfg, paths, run_dir)]
    finished = finished_run(run_dir, command)
    if finished is not None:
        _log(f"{policy.name} seed {cfg.seed}: reusing the finished run in {run_dir} (same command)")
        return finished
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    (run_dir / RUN_RECORD).unlink(missing_ok=True)
    for old in (run_dir / "validation").glob("*.jsonl"):
        old.unlink()
    (run_dir / "command.txt").write_text(" \\\n  ".join(command) + "\n")
    _log(f"{policy.name} seed {cfg.seed}: training {cfg.steps} steps (log: {run_dir / 'train.log'})")
    start = time.monotonic()
    seen = 0
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_DEDUP_LOGS": "0", **(CPU_ENV if cfg.device == "cpu" else {})},
        )
        while proc.poll() is None:
            time.sleep(2)
            rows = read_metrics(metrics_path)
            for row in rows[seen:]:
                line = progress_line(row, cfg.steps)
                _log(f"{policy.name} seed {cfg.seed}: {line} ({time.monotonic() - start:.0f}s)")
            seen = len(rows)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise RuntimeError(f"{policy.name} failed (exit {proc.returncode}); see {run_dir / 'train.log'}\n{tail}")
    run = summarize_run(policy, run_dir, wall) | {"seed": cfg.seed}
    (run_dir / RUN_RECORD).write_text(json.dumps({"command": command, "run": run}, indent=2))
    return run


def finished_run(run_dir: Path, command: list[str]) -> dict[str, Any] | None:
    """The summary of a run that finished in ``run_dir`` with exactly ``command`` (so an interrupted
    ``--seeds N`` experiment resumes where it stopped), else ``None``."""
    record = run_dir / RUN_RECORD
    if not record.exists():
        return None
    saved = json.loads(record.read_text())
    return saved["run"] if saved.get("command") == command else None


def progress_line(row: dict[str, Any], steps: int) -> str:
    """One line per logged step: tokens, reward, stop/abort rates, held-out accuracy when evaluated."""
    data = row.get("data", {})
    parts = [f"step {row.get('step')}/{steps}"]
    if "duet/tokens_generated" in data:
        parts.append(f"tokens {data['duet/tokens_generated']:,.0f}")
    if "critic/score/mean" in data:
        parts.append(f"reward {data['critic/score/mean']:.3f}")
    if "duet/rate_aborted" in data:
        parts.append(f"aborted {data['duet/rate_aborted']:.0%} stopped {data['duet/rate_stopped_after_marker']:.0%}")
    val = [v for k, v in data.items() if k.startswith("val-core/") and "/acc/mean@" in k]
    if val:
        parts.append(f"held-out accuracy {sum(val) / len(val):.3f} (mean over tasks)")
    return ", ".join(parts)


def summarize_run(policy: Policy, run_dir: Path, wall: float) -> dict[str, Any]:
    """The summary entry of one run: tokens, accuracy (curve), time, stop/abort rates."""
    from duet_verl.core.controller import IO_TIMING, PLAN_TIMING, UPDATE_TIMING

    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "duet/tokens_generated" in r.get("data", {})]
    tokens_by_step = {int(r["step"]): float(r["data"]["duet/tokens_generated"]) for r in rows}
    seconds_by_step = {int(r["step"]): float(r["data"].get("timing_s/step", 0.0)) for r in rows}
    cumulative, total = {0: (0.0, 0.0)}, (0.0, 0.0)
    for step in sorted(tokens_by_step):
        total = (total[0] + tokens_by_step[step], total[1] + seconds_by_step[step])
        cumulative[step] = total
    accuracy = validation_accuracy(run_dir)
    curve = [
        {"step": s, "tokens": cumulative.get(s, total)[0], "seconds": cumulative.get(s, total)[1], "accuracy": a}
        for s, a in sorted(accuracy.items())
    ]

    def mean_of(key: str) -> float | None:
        values = [float(r["data"][key]) for r in rows if key in r["data"]]
        return sum(values) / len(values) if values else None

    evaluations = sorted((run_dir / "validation").glob("*.jsonl"), key=lambda f: int(f.stem))
    return {
        "policy": policy.name,
        "method": policy.method,
        "budget": policy.budget,
        "steps": len(rows),
        "tokens_total": total[0],
        "initial_accuracy": curve[0]["accuracy"] if curve else None,
        "final_accuracy": curve[-1]["accuracy"] if curve else None,
        "wall_clock_s": wall,
        "train_time_s": sum(float(r["data"].get("timing_s/step", 0.0)) for r in rows),
        "gen_time_s": sum(float(r["data"].get("timing_s/gen", 0.0)) for r in rows),
        # DUET's own work (plan + update) as a share of verl's step time, and its TransferQueue reads and writes
        # (data movement verl's own advantage stage does too) as another (None for GRPO)
        "duet_overhead_share": _share_of_step(rows, (PLAN_TIMING, UPDATE_TIMING)),
        "duet_io_share": _share_of_step(rows, (IO_TIMING,)),
        # medians per step: verl's step, its advantage stage (DUET's replaces GRPO's there), DUET's plan and whole
        # advantage stage (its own work and the TransferQueue reads and writes)
        "step_s_median": _median_of(rows, ("timing_s/step",)),
        "advantage_s_median": _median_of(rows, ("timing_s/adv",)),
        "duet_s_median": _median_of(rows, (PLAN_TIMING, UPDATE_TIMING, IO_TIMING)),
        "abort_rate": mean_of("duet/rate_aborted"),
        "marker_stop_rate": mean_of("duet/rate_stopped_after_marker"),
        "eps_kept_rate": mean_of("duet/rate_eps_kept"),
        # rollouts whose DUET score differed from verl's sequence score, summed over steps (0 when correct)
        "score_mismatch": sum(float(r["data"].get("duet/score_mismatch", 0.0)) for r in rows),
        "mean_reward": mean_of("critic/score/mean"),
        "heldout_start": heldout_profile(evaluations[0]) if evaluations else None,
        "heldout_end": heldout_profile(evaluations[-1]) if evaluations else None,
        "accuracy_curve": curve,
    }


def _median_of(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> float | None:
    """Median over the steps that logged all of ``keys`` of their sum (``None`` if none did)."""
    import statistics

    values = [sum(float(r["data"][k]) for k in keys) for r in rows if all(k in r["data"] for k in keys)]
    return statistics.median(values) if values else None


def _duet_net_share(runs: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]] | None) -> float | None:
    """DUET's time beyond what verl's own GRPO advantage stage costs on the same seed, as a share of a step (mean over
    seeds): ``(plan + update + TransferQueue reads and writes − GRPO's advantage stage) / step``, medians per step.
    ``None`` without both."""
    shares = []
    for seed, run in runs.items():
        base = (baseline or {}).get(seed, {})
        if None not in (run.get("duet_s_median"), run.get("step_s_median"), base.get("advantage_s_median")):
            shares.append((run["duet_s_median"] - base["advantage_s_median"]) / run["step_s_median"])
    return sum(shares) / len(shares) if shares else None


def _share_of_step(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> float | None:
    """The summed time of ``keys`` over the steps that logged them, as a share of those steps' ``timing_s/step``."""
    timed = [r["data"] for r in rows if all(k in r["data"] for k in keys)]
    step = sum(float(d.get("timing_s/step", 0.0)) for d in timed)
    spent = sum(float(d[k]) for d in timed for k in keys)
    return spent / step if timed and step > 0 else None


BASELINE = "grpo@1"  # the policy every other one is compared with, seed by seed


def aggregate_runs(
    policy: Policy, runs: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]] | None
) -> dict[str, Any]:
    """One policy's ``results`` entry over its seeds: means, 95 % intervals, the paired difference of final
    accuracy against :data:`BASELINE`, the per-seed runs, and the mean curve (with a 95 % band per evaluation)."""
    from duet_verl.demo.stats import auc_tokens, mean_ci95, paired_difference

    seeds = sorted(runs)
    ordered = [runs[s] for s in seeds]

    def mean_of(key: str) -> float | None:
        values = [r[key] for r in ordered if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    finals = {s: runs[s]["final_accuracy"] for s in seeds if runs[s]["final_accuracy"] is not None}
    final_mean, final_ci = mean_ci95(list(finals.values())) if finals else (None, None)
    diff = None
    if baseline and policy.name != BASELINE and finals:
        base = {s: r["final_accuracy"] for s, r in baseline.items() if r["final_accuracy"] is not None}
        diff = paired_difference(finals, base) if set(base) & set(finals) else None
    curve = []
    for step in sorted({c["step"] for r in ordered for c in r["accuracy_curve"]}):
        points = [c for r in ordered for c in r["accuracy_curve"] if c["step"] == step]
        accuracy, band = mean_ci95([c["accuracy"] for c in points])
        curve.append(
            {
                "step": step,
                "tokens": sum(c["tokens"] for c in points) / len(points),
                "seconds": sum(c.get("seconds", 0.0) for c in points) / len(points),
                "accuracy": accuracy,
                "accuracy_ci95": band,
            }
        )
    return {
        "policy": policy.name,
        "method": policy.method,
        "budget": policy.budget,
        "seeds": seeds,
        "final_accuracy_mean": final_mean,
        "final_accuracy_ci95": final_ci,
        "auc_tokens_mean": sum(auc_tokens(r["accuracy_curve"]) for r in ordered) / len(ordered),
        "tokens_total_mean": mean_of("tokens_total"),
        "gen_time_s_mean": mean_of("gen_time_s"),
        "wall_clock_s_mean": mean_of("wall_clock_s"),
        "diff_vs_grpo1": diff,
        # the single-run fields, averaged over the seeds (the table reads these)
        "steps": min(r["steps"] for r in ordered),
        "tokens_total": mean_of("tokens_total"),
        "initial_accuracy": mean_of("initial_accuracy"),
        "final_accuracy": final_mean,
        "wall_clock_s": mean_of("wall_clock_s"),
        "abort_rate": mean_of("abort_rate"),
        "marker_stop_rate": mean_of("marker_stop_rate"),
        "eps_kept_rate": mean_of("eps_kept_rate"),
        "duet_overhead_share": mean_of("duet_overhead_share"),
        "duet_io_share": mean_of("duet_io_share"),
        "duet_net_share": _duet_net_share(runs, baseline),
        "score_mismatch": sum(r["score_mismatch"] for r in ordered),
        "accuracy_curve": curve,
        "runs": ordered,
    }


def step0_spread(runs: dict[str, dict[int, dict[str, Any]]]) -> float | None:
    """The largest difference, within one seed, between the policies' step-0 accuracies (``None`` with one policy)."""
    by_seed: dict[int, list[float]] = {}
    for per_seed in runs.values():
        for seed, run in per_seed.items():
            if run.get("initial_accuracy") is not None:
                by_seed.setdefault(seed, []).append(run["initial_accuracy"])
    spreads = [max(v) - min(v) for v in by_seed.values() if len(v) > 1]
    return max(spreads) if spreads else None


def plot_accuracy(results: list[dict[str, Any]], path: Path, x: str = "tokens") -> Path:
    """Held-out accuracy (mean over seeds, with its 95 % band when there are several) against cumulative rollout
    tokens (``x="tokens"``) or training seconds (``x="seconds"``), one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for res in results:
        curve = res["accuracy_curve"]
        xs = [c[x] for c in curve]
        (line,) = ax.plot(xs, [c["accuracy"] for c in curve], marker="o", label=res["policy"])
        bands = [c.get("accuracy_ci95") for c in curve]
        if all(bands) and bands:
            ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], color=line.get_color(), alpha=0.15)
    seeds = max((len(r.get("seeds", [])) for r in results), default=1)
    ax.set_xlabel("rollout tokens generated (cumulative)" if x == "tokens" else "training time, s (cumulative)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(
        f"DUET vs GRPO on the CPU quickstart: mean of {seeds} paired seeds, 95 % bands"
        if seeds > 1
        else "DUET vs GRPO on the CPU quickstart (one seed: a demo, not a measurement)"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of the summary (token ratios relative to ``grpo@1``, or the first policy)."""
    base = next((r for r in results if r["policy"] == "grpo@1"), results[0] if results else None)

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    columns = [
        ("policy", 14, lambda r: r["policy"]),
        ("tokens", 12, lambda r: fmt(r["tokens_total"], ",.0f")),
        (
            "vs base",
            9,
            lambda r: fmt(r["tokens_total"] / base["tokens_total"] if base["tokens_total"] else None, ".2f"),
        ),
        ("acc start", 11, lambda r: fmt(r["initial_accuracy"], ".3f")),
        ("acc end", 9, lambda r: fmt(r["final_accuracy"], ".3f")),
        ("wall s", 8, lambda r: fmt(r["wall_clock_s"], ".0f")),
        ("aborted", 9, lambda r: fmt(r["abort_rate"], ".0%")),
        ("stopped", 9, lambda r: fmt(r["marker_stop_rate"], ".0%")),
        ("duet time", 11, lambda r: fmt(r.get("duet_overhead_share"), ".2%")),
        ("duet io", 9, lambda r: fmt(r.get("duet_io_share"), ".2%")),
        ("duet net", 10, lambda r: fmt(r.get("duet_net_share"), ".2%")),
    ]
    header = "".join(name.ljust(w) if i == 0 else name.rjust(w) for i, (name, w, _) in enumerate(columns))
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append("".join(get(r).ljust(w) if i == 0 else get(r).rjust(w) for i, (_, w, get) in enumerate(columns)))
    return "\n".join(lines)


def _vllm_version() -> str:
    """The vLLM release in use (the CPU build's version shim reads ``X+cpu``: the release is ``X``)."""
    from importlib.metadata import version

    return version("vllm").split("+")[0]


def run_quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    """Build assets, train every policy, write ``summary.json`` and the plot; returns the summary."""
    policies = [parse_policy(p) for p in cfg.policies]
    if cfg.steps < 1:
        raise ValueError("--steps must be >= 1")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    paths = build_assets(cfg, out)
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    runs: dict[str, dict[int, dict[str, Any]]] = {p.name: {} for p in policies}
    todo, done, trained = len(seeds) * len(policies), 0, 0.0
    for seed in seeds:  # seeds outside: every finished seed holds a complete paired comparison
        for policy in policies:
            run_dir = out / policy.name if cfg.seeds == 1 else out / policy.name / f"seed{seed}"
            eta = f", ETA {trained / done * (todo - done) / 60:.0f} min" if done else ""
            _log(f"run {done + 1}/{todo}: {policy.name}, seed {seed}{eta}")
            run = run_policy(policy, replace(cfg, seed=seed), paths, run_dir)
            runs[policy.name][seed], done, trained = run, done + 1, trained + run["wall_clock_s"]
    results = [aggregate_runs(p, runs[p.name], runs.get(BASELINE)) for p in policies]
    spread = step0_spread(runs)
    summary = {
        "config": asdict(cfg),
        "rollout_engine": "vllm",  # verl's vLLM server with DUET's monitor, as on a cluster
        "vllm_version": _vllm_version(),
        "results": results,
        # every policy of a seed starts from the same model and evaluates it with the same sampling seeds: the
        # largest difference of their step-0 accuracies is the evaluation's own noise (0 when it repeats exactly)
        "step0_accuracy_spread": spread,
        "total_wall_clock_s": time.monotonic() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot = plot_accuracy(results, out / "accuracy_vs_tokens.png")
    plot_accuracy(results, out / "accuracy_vs_wall_clock.png", x="seconds")
    print(format_table(results))
    if spread is not None:
        _log(f"re-evaluation check: step-0 accuracy differs by at most {spread:.4f} between the policies of a seed")
    _log(f"wrote {out / 'summary.json'} and {plot}")
    return summary
