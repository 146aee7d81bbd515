"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: lspt never unpickles arbitrary objects, not even its own.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .. import atomic, schema
from ..errors import RunFileError, TrainingError

from ..rundir import CHECKPOINT_NAME, METRICS_NAME  # noqa: F401  (CHECKPOINT_NAME re-exported)
CHECKPOINT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact.

    Serialised in memory first: torch's own file writer turns a full disk into a RuntimeError
    ("unexpected pos"), a plain write raises OSError(ENOSPC), which the trainer reports cleanly."""
    state = dict(state, version=CHECKPOINT_VERSION)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(path, buffer.getvalue())


MAX_CHECKPOINT_BYTES = 8 * 2**30  # prompts + head + optimizer state: far below this


def load_checkpoint(path: Path, config=None) -> dict[str, Any]:
    """The checked state of a checkpoint (schema.checkpoint_state); with the run's `config`, also
    checked to belong to that run (names, optimizer, epochs)."""
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{path}: no checkpoint to resume from", hint="the run never finished an epoch; start it again")
    with atomic.open_regular(path, "checkpoint", RunFileError, MAX_CHECKPOINT_BYTES) as fh:
        data = fh.read()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise TrainingError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {message})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: not an lspt checkpoint of version {CHECKPOINT_VERSION}")
    schema.checkpoint_state(state, str(path))
    if config is not None:
        schema.checkpoint_fits_config(state, config, str(path))
        logged = len(schema.metrics_records(path.parent / METRICS_NAME))
        if logged < state["epoch"]:  # metrics are written before the checkpoint, so never fewer
            raise RunFileError(
                f"{path.parent / METRICS_NAME}: {logged} epoch record(s), but the checkpoint has {state['epoch']} "
                "epoch(s) done; the run's log is incomplete", hint="start the run again (--overwrite)")
    return state


def restore_into(state: dict[str, Any], path: Path, model, optimizer) -> None:
    """Load a checked checkpoint's tensors and optimizer state; a mismatch is one RunFileError."""
    from .. import bundle
    from ..errors import BundleError

    try:
        bundle.check_tensors(path, state["trainable"], model.trainable_state_dict())
    except BundleError as exc:
        raise RunFileError(exc.message.replace("does not fit the model", "does not fit the run's model")) from None
    model.load_trainable_state_dict(state["trainable"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise RunFileError(f"{path}: optimizer state does not fit the run ({message})") from None
