"""The Ray task that runs DUET's trainer: TransferQueue, :class:`DuetPPOTrainerSync` and verl's agent-loop manager."""

from __future__ import annotations

import ray
from omegaconf import DictConfig

__all__ = ["DuetTaskRunner"]


@ray.remote
class DuetTaskRunner:
    """Ray task that builds TransferQueue, the DUET trainer and verl's agent-loop manager, then trains."""

    def run(self, config: DictConfig) -> None:
        """Train; always closes TransferQueue and the tracker."""
        import transfer_queue as tq
        from omegaconf import OmegaConf
        from verl.utils.logging_utils import configure_verl_logging

        from duet_verl.adapters.compat import build_agent_loop_manager
        from duet_verl.adapters.trainer import DuetPPOTrainerSync

        configure_verl_logging()
        config.transfer_queue.enable = True
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        trainer, ok = None, False
        try:
            trainer = DuetPPOTrainerSync(config=config)
            trainer.init()
            trainer.fit(build_agent_loop_manager(config, trainer))
            ok = True
        finally:
            try:
                if getattr(trainer, "logger", None) is not None:
                    trainer.logger.finish(exit_code=0 if ok else 1)
            finally:
                tq.close()
