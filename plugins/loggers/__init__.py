"""Built-in experiment trackers for `lspt tune --log NAME` (docs/tracking.md).

They register through `lspt_register_loggers`, the hook a third-party logger (W&B, ...) uses too;
the modules that import TensorBoard or MLflow load only when a run asks for them.
"""

from __future__ import annotations

from lspt_cli import LoggerSpec, hookimpl


@hookimpl
def lspt_register_loggers(register):
    register(LoggerSpec(
        name="tensorboard",
        description="TensorBoard event files in RUN_DIR/tensorboard: per-epoch scalars, the config, hparams",
        factory="lspt_plugins.loggers.tensorboard_logger:TensorBoardLogger",
        requires=("tensorboard",),
        extra="tensorboard",
        options={"dir": "the event files' folder, relative to the run directory (default: tensorboard)"},
    ))
    register(LoggerSpec(
        name="mlflow",
        description="One MLflow run per lspt run (MLFLOW_TRACKING_URI, else <data dir>/mlruns); a sweep is one experiment",
        factory="lspt_plugins.loggers.mlflow_logger:MlflowLogger",
        requires=("mlflow",),
        extra="mlflow",
        reachable="lspt_plugins.loggers.mlflow_logger:reachable",
    ))
