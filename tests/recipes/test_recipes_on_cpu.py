"""Every recipe composes its full hydra config and passes DUET's and verl's checks with ``DRY_RUN=1`` (no GPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("run_*.sh"))


def test_there_are_recipes():
    assert len(RECIPES) >= 5 and any("megatron" in r.name for r in RECIPES)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_dry_run_composes_and_passes_the_checks(recipe):
    env = {**os.environ, "DRY_RUN": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(["bash", str(recipe)], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert "DRY_RUN=1" in out.stdout and "passes the checks" in out.stdout


def test_a_bad_override_fails_the_dry_run_naming_the_key():
    recipe = next(r for r in RECIPES if "megatron" in r.name)
    env = {**os.environ, "DRY_RUN": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(["bash", str(recipe), "duet.budget=2"], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 2 and "duet.budget" in out.stderr


def test_megatron_context_parallelism_is_refused_for_duet():
    recipe = next(r for r in RECIPES if "megatron" in r.name)
    env = {**os.environ, "DRY_RUN": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    override = "actor_rollout_ref.actor.megatron.context_parallel_size=2"
    out = subprocess.run(["bash", str(recipe), override], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 2 and "context_parallel_size" in out.stderr, out.stderr[-2000:]
