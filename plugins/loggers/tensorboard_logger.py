"""The `tensorboard` logger: event files under RUN_DIR/tensorboard, readable by TensorBoard.

Per epoch (step = epoch): the scalars of SCALARS; at the start the resolved config as text; at
the end the run's hparams (the config's scalar values) with test top-1 and the trainable-parameter
count as its metrics (TensorBoard's HPARAMS tab).
"""

from __future__ import annotations

import json
from pathlib import Path

# metrics.jsonl key -> TensorBoard tag
SCALARS = {
    "train_loss": "train/loss",
    "train_acc": "train/acc",
    "val_loss": "val/loss",
    "val_acc": "val/acc",
    "val_mean_per_class": "val/mean_per_class",
    "lr": "lr",
    "images_per_s": "speed/images_per_s",
}
EVENTS_DIR = "tensorboard"


class TensorBoardLogger:
    """Args:
        dir: the event files' folder, relative to the run directory (`--log-opt tensorboard.dir=tb`).
    """

    def __init__(self, dir: str = EVENTS_DIR):
        self.dir = dir

    def start(self, run, config, state):
        from torch.utils.tensorboard import SummaryWriter

        self.config = config
        logdir = Path(run.dir) / self.dir
        if not state.get("started"):  # a fresh run (also --overwrite): no events of an older run
            for old in logdir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(log_dir=str(logdir))
        if not state.get("started"):
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", 0)
        self.writer.flush()  # an unwritable directory fails here, before the first epoch
        return {"started": True}

    def log_epoch(self, epoch, metrics):
        for key, tag in SCALARS.items():
            if isinstance(metrics.get(key), (int, float)) and not isinstance(metrics[key], bool):
                self.writer.add_scalar(tag, metrics[key], epoch)
        self.writer.flush()

    def finish(self, summary, bundle):
        from torch.utils.tensorboard.summary import hparams

        params = {**hparam_values(self.config), "trainable_params": summary["params"]["trainable"]}
        results = {"hparam/test_top1": summary["test_top1"], "hparam/trainable_params": summary["params"]["trainable"]}
        for event in hparams(params, results):
            self.writer.file_writer.add_summary(event)
        for tag, value in results.items():
            self.writer.add_scalar(tag, value, summary["epochs"])
        self.writer.close()

    def close(self):
        self.writer.close()


def hparam_values(config: dict, prefix: str = "") -> dict:
    """The config's scalar values, nested keys joined by '.' (lists as JSON text)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hparam_values(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif value is None:
            out[name] = ""
        else:
            out[name] = json.dumps(value)
    return out
