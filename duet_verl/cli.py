"""``duet-verl`` command line: ``quickstart``, ``report``, ``score-prompts``, ``bench``, ``simulate`` and
``prepare-data``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from duet_verl.demo.quickstart import QuickstartConfig


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``duet-verl`` console script."""
    from duet_verl.demo.quickstart import DEVICES, QuickstartConfig
    from duet_verl.tools.bench_vllm import SHAPES, VllmBenchConfig

    defaults = QuickstartConfig()
    parser = argparse.ArgumentParser(prog="duet-verl", description="DUET token-budget allocation for verl.")
    sub = parser.add_subparsers(dest="command", required=True)

    quick = sub.add_parser("quickstart", help="train a tiny model with DUET and GRPO (CPU by default) and compare them")
    quick.add_argument("--out", default=defaults.out, help="output directory (summary.json, plot, logs)")
    quick.add_argument("--steps", type=int, default=defaults.steps, help="training steps per policy")
    quick.add_argument("--task", default=",".join(defaults.tasks), help="comma-separated tasks: arith,search,copy")
    quick.add_argument(
        "--policies",
        default=",".join(defaults.policies),
        help="comma-separated method@budget, methods: grpo, grpo-aa (A/A arm: GRPO on other seeds), duet, "
        "duet-alloc (allocation only), duet-stop (stop/abort only), and the baselines uniform, greso, vip, arrol "
        "(duet.policy)",
    )
    quick.add_argument("--seed", type=int, default=defaults.seed)
    quick.add_argument(
        "--seeds", type=int, default=defaults.seeds, help="paired seeds --seed, --seed+1, ...: means, 95%% CIs, diffs"
    )
    quick.add_argument("--prompts-per-step", type=int, default=defaults.prompts_per_step)
    quick.add_argument("--group-size", type=int, default=defaults.group_size, help="reference rollouts per prompt G")
    quick.add_argument("--warm-start-steps", type=int, default=defaults.warm_start_steps)
    quick.add_argument("--evals", type=int, default=defaults.evals, help="held-out evaluations during training")
    quick.add_argument(
        "--heldout-problems",
        type=int,
        default=defaults.val_problems,
        help="held-out problems each evaluation scores (mean@4; fewer: a faster, noisier evaluation)",
    )
    quick.add_argument(
        "--device", choices=DEVICES, default=defaults.device, help="where verl trains and vLLM generates"
    )

    report = sub.add_parser("report", help="plot a run's logged metrics (verl file logger or TensorBoard)")
    report.add_argument("run_dir", help="a run directory (metrics.jsonl, or TensorBoard event files)")
    report.add_argument("--out", default=None, help="where to write the plots (default: RUN_DIR/report)")

    score = sub.add_parser("score-prompts", help="add the prompts' mean token log-prob column to a verl parquet file")
    score.add_argument("--model", required=True, help="local Hugging Face model directory")
    score.add_argument("--input", required=True, help="verl parquet file with a chat 'prompt' column")
    score.add_argument("--output", required=True, help="parquet file to write")
    score.add_argument("--column", default="duet_prompt_logprob", help="name of the new column")
    score.add_argument("--batch-size", type=int, default=8)

    bench = sub.add_parser("bench", help="time the allocator and the stop/abort monitor; last line is JSON")
    bench.add_argument("--repeats", type=int, default=30, help="timed repetitions per measurement (median)")
    vllm_defaults = VllmBenchConfig()
    bench.add_argument(
        "--vllm", action="store_true", help="also time DUET's rollouts against plain ones in the real vLLM engine"
    )
    bench.add_argument("--model", default=None, help="--vllm: local model directory (default: random, --shape)")
    bench.add_argument("--requests", type=int, default=vllm_defaults.requests, help="--vllm: requests per batch")
    bench.add_argument("--max-tokens", type=int, default=vllm_defaults.max_tokens, help="--vllm: tokens per request")
    bench.add_argument("--rounds", type=int, default=vllm_defaults.rounds, help="--vllm: interleaved rounds (median)")
    bench.add_argument(
        "--shape", choices=tuple(SHAPES), default=vllm_defaults.shape, help="--vllm: random model shape (no --model)"
    )
    bench.add_argument(
        "--async-scheduling",
        choices=("auto", "on", "off"),
        default="auto",
        help="--vllm: vLLM's async scheduling (auto: vLLM's choice, on by default on a GPU; the CPU has none)",
    )

    from duet_verl.tools.simulate import SimConfig

    sim_defaults = SimConfig()
    sim = sub.add_parser(
        "simulate",
        help="run DUET's controller on a synthetic prompt population and compare policies; last line is JSON",
    )
    sim.add_argument("--prompts", type=int, default=sim_defaults.prompts, help="population size")
    sim.add_argument("--batch", type=int, default=sim_defaults.batch, help="prompts per step")
    sim.add_argument("--epochs", type=int, default=sim_defaults.epochs)
    sim.add_argument("--group-size", type=int, default=sim_defaults.group_size, help="GRPO's rollouts per prompt G")
    sim.add_argument("--cap", type=int, default=sim_defaults.cap, help="response length cap")
    sim.add_argument("--seed", type=int, default=sim_defaults.seed)
    sim.add_argument("--impossible", type=float, default=sim_defaults.impossible, help="share of prompts with p = 0")
    sim.add_argument("--trivial", type=float, default=sim_defaults.trivial, help="share of prompts with p = 1")
    sim.add_argument(
        "--policies",
        default=",".join(sim_defaults.policies),
        help="comma-separated grpo@B, duet@B (default settings + --duet), duet-old@B (settings before issue 11), "
        "or the baselines uniform@B, greso@B, vip@B (duet.policy; + --duet)",
    )
    sim.add_argument("--duet", default="{}", help="JSON overrides of the duet: section for every duet.policy run")

    data = sub.add_parser(
        "prepare-data", help="write the benchmark datasets as verl parquet files; last line is a JSON summary"
    )
    data.add_argument(
        "--out",
        default=os.path.expanduser(os.environ.get("DATA_DIR", "~/data/duet")),
        help="directory for {dataset}.parquet and prepare_data.json (default: $DATA_DIR, else ~/data/duet, where "
        "the recipes look)",
    )
    data.add_argument("--datasets", default=None, help="comma-separated subset (default: all datasets)")
    data.add_argument(
        "--from-dir", default=None, help="read {dataset}.jsonl or .parquet here instead of the Hugging Face hub"
    )
    return parser


def quickstart_config(args: argparse.Namespace) -> QuickstartConfig:
    """The :class:`QuickstartConfig` of parsed ``quickstart`` arguments."""
    from duet_verl.demo.quickstart import QuickstartConfig

    return QuickstartConfig(
        out=args.out,
        steps=args.steps,
        tasks=[t for t in args.task.split(",") if t.strip()],
        policies=[p for p in args.policies.split(",") if p.strip()],
        seed=args.seed,
        seeds=args.seeds,
        prompts_per_step=args.prompts_per_step,
        group_size=args.group_size,
        warm_start_steps=args.warm_start_steps,
        evals=args.evals,
        val_problems=args.heldout_problems,
        device=args.device,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``duet-verl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from duet_verl.tools.bench import main as bench_main
        from duet_verl.tools.bench_vllm import VllmBenchConfig

        _require_positive(parser, args, "repeats", "requests", "max_tokens", "rounds")
        vllm = None
        if args.vllm:
            scheduling = {"auto": None, "on": True, "off": False}[args.async_scheduling]
            vllm = VllmBenchConfig(
                args.model, args.requests, args.max_tokens, args.rounds, shape=args.shape, async_scheduling=scheduling
            )
        return bench_main(args.repeats, vllm)
    if args.command == "simulate":
        return _simulate(parser, args)
    if args.command == "quickstart":
        from duet_verl.demo.quickstart import parse_policy, problem_splits, run_quickstart

        cfg = quickstart_config(args)
        _require_positive(parser, args, "steps", "seeds", "heldout_problems")
        try:
            for p in cfg.policies:
                parse_policy(p)
            problem_splits(cfg)  # unknown tasks, or too few distinct problems for the three sets
        except ValueError as err:
            parser.error(str(err))
        run_quickstart(cfg)
        return 0
    if args.command == "report":
        from duet_verl.tools.report import write_report

        write_report(args.run_dir, args.out)
        return 0
    if args.command == "prepare-data":
        return _prepare_data(parser, args)
    if args.command == "score-prompts":
        from duet_verl.tools.score_prompts import score_prompts

        score_prompts(args.model, args.input, args.output, args.column, args.batch_size)
        return 0
    return 2


def _require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Exit with argparse's usage error unless every named integer option is >= 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")


def _prepare_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run ``prepare-data``; a bad input prints its file and row and exits with status 2."""
    import json

    from duet_verl.data import DATASETS, DataError, prepare_data

    names = [n.strip() for n in args.datasets.split(",") if n.strip()] if args.datasets else None
    unknown = [n for n in names or () if n not in DATASETS]
    if unknown or names == []:
        parser.error(f"--datasets: unknown or empty {unknown}; known: {','.join(DATASETS)}")
    try:
        summary = prepare_data(args.out, names, args.from_dir)
    except DataError as err:
        print(f"duet-verl prepare-data: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0


def _simulate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import json

    from duet_verl.core.settings import DuetSettings
    from duet_verl.tools.simulate import SimConfig, parse_policy
    from duet_verl.tools.simulate import main as simulate_main

    try:
        duet = json.loads(args.duet)
        DuetSettings.from_mapping(duet).validate(args.group_size)
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        parser.error(f"--duet: {err}")
    _require_positive(parser, args, "prompts", "batch", "epochs", "group_size", "cap")
    if args.batch > args.prompts:
        parser.error("--batch must not exceed --prompts")
    if not (0 <= args.impossible and 0 <= args.trivial and args.impossible + args.trivial < 1):
        parser.error("--impossible and --trivial must be >= 0 and sum to less than 1")
    cfg = SimConfig(
        prompts=args.prompts,
        batch=args.batch,
        epochs=args.epochs,
        group_size=args.group_size,
        cap=args.cap,
        seed=args.seed,
        impossible=args.impossible,
        trivial=args.trivial,
        policies=tuple(p.strip() for p in args.policies.split(",") if p.strip()),
        duet=duet,
    )
    try:
        for policy in cfg.policies:
            parse_policy(policy)
    except ValueError as err:
        parser.error(str(err))
    return simulate_main(cfg)


if __name__ == "__main__":
    sys.exit(main())
