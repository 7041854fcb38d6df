"""DUET's state is saved with verl's checkpoints and restored on resume (real verl run on CPU)."""

import json
import subprocess
import sys
from pathlib import Path

from duet_verl.demo.quickstart import Policy, QuickstartConfig, build_assets, policy_overrides, read_metrics


def test_checkpoint_carries_duet_state_across_a_resume(tmp_path):
    cfg = QuickstartConfig(
        out=str(tmp_path),
        steps=1,
        prompts_per_step=4,
        group_size=4,
        warm_start_steps=5,
        train_problems=64,
        val_problems=8,
        evals=1,
    )
    paths = build_assets(cfg, Path(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # verl's file logger does not create the directory of VERL_FILE_LOGGER_PATH

    def train(total_steps: int) -> subprocess.CompletedProcess:
        overrides = policy_overrides(Policy("duet", 0.5), cfg, paths, run_dir)
        overrides = [
            o
            for o in overrides
            if not o.startswith(("trainer.total_training_steps", "trainer.save_freq", "trainer.val_before_train"))
        ]
        overrides += [
            f"trainer.total_training_steps={total_steps}",
            "trainer.save_freq=1",
            "trainer.val_before_train=False",
            "trainer.resume_mode=auto",
        ]
        return subprocess.run(
            [sys.executable, "-m", "duet_verl.main", *overrides], capture_output=True, text=True, timeout=900
        )

    first = train(1)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state_file = run_dir / "checkpoints" / "global_step_1" / "duet_state.json"
    saved = json.loads(state_file.read_text())
    assert len(saved["surrogate"]["prompts"]) == 4  # one step of 4 prompts

    second = train(2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[duet] restored DUET state" in second.stdout + second.stderr
    rows = {r["step"]: r["data"] for r in read_metrics(run_dir / "metrics.jsonl")}
    assert rows[2]["duet/tracked_prompts"] == 8  # 4 restored + 4 new: the state continued
