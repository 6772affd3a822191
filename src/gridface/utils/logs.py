"""Lightning's messages in the run's log file, not only on the console.

pytorch_lightning and lightning_fabric give their loggers a console handler of their own and stop them propagating
when they are imported before logging is configured (always, here: Hydra configures it when the job starts). So the
per-epoch validation metrics, the restore messages and the run's summary reached the terminal but never
``<task>.log``. At job start, after Hydra's logging setup, they hand their records to the root logger, which writes
both the console and the file."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback

LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning", "lightning.pytorch", "lightning.fabric")


def route_lightning_logs_to_root() -> None:
    """Drop Lightning's own console handlers and let its records propagate to the root logger's handlers."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # its console handler; a user's file handler stays
                logger.removeHandler(handler)
        logger.propagate = True


class LightningLogsToRunLog(Callback):
    """Hydra callback (``configs/hydra/default.yaml``): :func:`route_lightning_logs_to_root` once the job's
    logging is configured."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if logging.getLogger().handlers:  # Hydra configured logging (hydra.job_logging not disabled)
            route_lightning_logs_to_root()
