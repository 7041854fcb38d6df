"""``python -m duet_verl.main``: verl's V1 sync trainer with DUET, configured by ``config/duet_trainer.yaml``.

The ``duet:`` section (and the verl settings DUET relies on) is validated in the driver before Ray starts;
a bad value exits with status 2 and a message naming the key. With ``DRY_RUN=1`` in the environment it stops after
composing the config and running DUET's and verl's checks (no GPU needed), exiting 0: every recipe honours it;
``DRY_RUN_CONFIG=FILE`` then also saves the resolved config as YAML in ``FILE``.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from duet_verl.adapters.config_check import ConfigError, check_config


@hydra.main(config_path="config", config_name="duet_trainer", version_base=None)
def main(config: DictConfig) -> None:
    """Validate, then run verl's PPO driver with :class:`DuetTaskRunner`."""
    try:
        check_config(config)
    except ConfigError as err:
        print(f"duet-verl: invalid configuration: {err}", file=sys.stderr)
        sys.exit(2)
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from duet_verl.adapters.task_runner import DuetTaskRunner

    dry_run = os.environ.get("DRY_RUN", "0") == "1"
    if not dry_run:
        auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if dry_run:
        name = config.trainer.experiment_name
        if os.environ.get("DRY_RUN_CONFIG"):
            OmegaConf.save(config, os.environ["DRY_RUN_CONFIG"], resolve=True)
        print(f"duet-verl: DRY_RUN=1: {name}: the configuration composes and passes the checks")
        return
    run_ppo(config, task_runner_class=DuetTaskRunner)


if __name__ == "__main__":
    main()
