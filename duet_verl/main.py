"""``python -m duet_verl.main``: verl's V1 sync trainer with DUET, configured by ``config/duet_trainer.yaml``.

The ``duet:`` section (and the verl settings DUET relies on) is validated in the driver before Ray starts;
a bad value exits with status 2 and a message naming the key.
"""

from __future__ import annotations

import logging
import sys

import hydra
import ray
from omegaconf import DictConfig

from duet_verl.checks import ConfigError, check_config

logger = logging.getLogger(__name__)


@ray.remote
class DuetTaskRunner:
    """Ray task that builds TransferQueue, the DUET trainer and verl's agent-loop manager, then trains."""

    def run(self, config: DictConfig) -> None:
        """Train; always closes TransferQueue and the tracker."""
        import transfer_queue as tq
        from omegaconf import OmegaConf
        from verl.trainer.main_ppo import TaskRunnerV1
        from verl.utils.logging_utils import configure_verl_logging

        from duet_verl.trainer.duet_trainer import DuetPPOTrainerSync

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        trainer, ok = None, False
        try:
            trainer = DuetPPOTrainerSync(config=config)
            trainer.init()
            helper = TaskRunnerV1.__ray_actor_class__()  # reuse verl's agent-loop manager construction
            helper.config, helper.trainer = config, trainer
            helper.init_agent_loop_manager()
            trainer.fit(helper.agent_loop_manager)
            ok = True
        finally:
            try:
                if getattr(trainer, "logger", None) is not None:
                    trainer.logger.finish(exit_code=0 if ok else 1)
            finally:
                tq.close()


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

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=DuetTaskRunner)


if __name__ == "__main__":
    main()
