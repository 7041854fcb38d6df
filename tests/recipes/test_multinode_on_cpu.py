"""``recipes/slurm/duet.sbatch`` on stand-ins for SLURM and Ray: it starts Ray's head on the first node and a worker on
each other one, waits for them, and runs the recipe on the head with ``NNODES``; the recipe itself really runs, with
``DRY_RUN=1``, so the composed config shows ``trainer.nnodes``."""

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).parents[2]
SBATCH = ROOT / "recipes" / "slurm" / "duet.sbatch"

FAKES = {
    # scontrol show hostnames LIST -> one name a line
    "scontrol": 'printf "%s\\n" n1 n2 n3\n',
    # srun [options] -w NODE CMD...: log the node and the command, then run the command here
    "srun": (
        'node=""\nwhile [[ $1 == -* ]]; do if [[ $1 == -w ]]; then node=$2; shift; fi; shift; done\n'
        'echo "srun $node: $*" >> "$LOG"\nexec "$@"\n'
    ),
    # ray start ... logs itself (the next `ray status` then lists one more node); ray status lists them
    "ray": (
        'if [[ $1 == start ]]; then echo "ray $*" >> "$LOG"; echo x >> "$LOG.nodes"; exit 0; fi\n'
        'n=$(cat "$LOG.nodes" 2>/dev/null | wc -l); for i in $(seq "$n"); do echo " 1 node_$i"; done\n'
    ),
    "hostname": "echo 10.0.0.1\n",
}


def test_the_sbatch_script_parses():
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0


def test_sbatch_starts_head_and_workers_then_the_recipe_on_the_head_with_nnodes(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    log, dump = tmp_path / "log", tmp_path / "config.yaml"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("NNODES", "NGPUS_PER_NODE", "RAY_ADDRESS")},
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
        "LOG": str(log),
        "SLURM_JOB_NODELIST": "n[1-3]",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "RECIPE": "qwen3_4b",
        "METHOD": "grpo",
        "BUDGET": "0.5",
        "DRY_RUN": "1",
        "DRY_RUN_CONFIG": str(dump),
        "DATA_DIR": str(tmp_path),
    }
    out = subprocess.run(["bash", str(SBATCH), "trainer.test_freq=5"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    lines = log.read_text().splitlines()
    starts = [line for line in lines if line.startswith("ray start")]
    assert starts[0] == "ray start --head --node-ip-address=10.0.0.1 --port=6379 --num-gpus=4 --block"
    assert starts[1:] == ["ray start --address=10.0.0.1:6379 --num-gpus=4 --block"] * 2
    nodes = [line.split(":")[0].removeprefix("srun ") for line in lines if line.startswith("srun")]
    # the address lookup and the head on n1, a worker on n2 and on n3 (started together), the recipe on n1
    assert nodes[:2] == ["n1", "n1"] and sorted(nodes[2:4]) == ["n2", "n3"] and nodes[4:] == ["n1"]
    assert lines[-1].startswith("srun n1: env NNODES=3 NGPUS_PER_NODE=4 RAY_ADDRESS=10.0.0.1:6379 bash ")
    assert lines[-1].endswith("recipes/qwen3_4b.sh trainer.test_freq=5")
    cfg = OmegaConf.load(dump)
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node, cfg.trainer.test_freq) == (3, 4, 5)
    assert cfg.actor_rollout_ref.rollout.n == 4 and cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-4B-Base"


def test_sbatch_refuses_an_unknown_recipe(tmp_path):
    env = {**os.environ, "SLURM_JOB_NUM_NODES": "2", "RECIPE": "nope", "SLURM_SUBMIT_DIR": str(ROOT)}
    out = subprocess.run(["bash", str(SBATCH)], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "RECIPE=nope" in out.stderr
