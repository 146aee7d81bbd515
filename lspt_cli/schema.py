"""Schemas of the files lspt reads back: run `config.json`, checkpoint metadata, `metrics.jsonl`,
`summary.json` (JSON files anyone can edit, truncate or replace).

One place decides what each file must hold, so a hand-edited, truncated, foreign or hostile file is
one `RunFileError` naming the file and what was expected, never a KeyError or TypeError far away,
and never a silent fallback to defaults (a `config.json` without `train` would resume an AdamW run
with SGD defaults). Plain checks, no dependency: `lspt --help` imports none of this, and nothing
here imports torch. Reading goes through atomic.read_regular_text: regular files only, size-capped.
Manifests (data/manifest.py), recipes (recipes.py) and bundles (bundle.py) have their own checks
next to their formats; they read through the same regular-file reader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import atomic
from .errors import ConfigError, RunFileError

# config.json's `train` keys that decide the result: without them a resume would silently use defaults.
RESULT_KEYS = ("epochs", "warmup_epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "grad_clip", "seed")
# checkpoint `meta` (the run's identity) -> required fields and their types
META_FIELDS = {
    "backbone": {"name": str, "fingerprint": str},
    "strategy": {"name": str, "config": dict},
    "task": {"name": str, "classes": list, "benchmark": str},
    "data_config": {},
}
# metrics.jsonl fields read back (report's curves, the summary's time and speed)
METRIC_NUMBERS = ("train_loss", "train_acc", "lr", "images_per_s", "seconds", "val_loss", "val_acc",
                  "val_mean_per_class", "best_val_acc")
SUMMARY_FIELDS = {"task": str, "backbone": str, "strategy": str, "test_top1": float}


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def is_kind(value: Any, kind: type) -> bool:
    """isinstance with JSON's meaning: bool is not a number, an int is a valid float."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def expect_object(doc: Any, where: str, what: str = "a JSON object") -> dict:
    if not isinstance(doc, dict):
        raise RunFileError(f"{where}: expected {what}, got {type_name(doc)}")
    return doc


def expect_fields(doc: dict, fields: dict[str, type], where: str, optional: tuple[str, ...] = ()) -> None:
    """Every field present (unless optional) and of its type."""
    for key, kind in fields.items():
        if key not in doc:
            if key in optional:
                continue
            raise RunFileError(f"{where}: missing '{key}' ({type_name(kind())} expected)")
        if not is_kind(doc[key], kind):
            raise RunFileError(f"{where}: '{key}' must be {type_name(kind())}, got {type_name(doc[key])}")


def load_json_file(path: str | Path, what: str) -> Any:
    """A JSON document from a regular file; RunFileError naming the file otherwise."""
    text = atomic.read_regular_text(path, what, RunFileError)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RunFileError(f"{path}: corrupt {what}, not valid JSON ({type(exc).__name__}: {exc})") from None


# -- config.json ------------------------------------------------------------------------------------
def run_config(path: str | Path):
    """The ResolvedConfig recorded in a run's config.json, every field checked."""
    from .recipes import ResolvedConfig
    from .settings import TrainConfig, coerce_train_values

    path = Path(path)
    doc = expect_object(load_json_file(path, "run config"), str(path))
    expect_fields(doc, {"backbone": str, "strategy": str, "task": str, "benchmark": str, "train": dict}, str(path))
    optional = {"strategy_config": dict, "final": bool, "recipes": list, "grid": dict, "protocol": str,
                "meta": dict, "params": dict}
    expect_fields(doc, optional, str(path), optional=tuple(optional))
    if doc.get("weights") is not None and not isinstance(doc["weights"], str):
        raise RunFileError(f"{path}: 'weights' must be a string or null, got {type_name(doc['weights'])}")
    missing = [k for k in RESULT_KEYS if k not in doc["train"]]
    if missing:
        raise RunFileError(f"{path}: 'train' lacks {', '.join(missing)}; the run cannot be continued exactly",
                           hint="restore the run's config.json, or start a new run")
    data = {k: doc[k] for k in ("backbone", "strategy", "task", "benchmark", "weights", "train", "strategy_config",
                                "final", "recipes", "grid") if k in doc}
    try:
        coerce_train_values(doc["train"], f"{path} [train]")
        config = ResolvedConfig.from_json(data)
        config.train.validate(f"{path} [train]")
    except ConfigError as exc:
        raise RunFileError(exc.message) from None
    if not isinstance(config.train, TrainConfig):  # pragma: no cover - from_json builds one
        raise RunFileError(f"{path}: malformed 'train'")
    return config


# -- checkpoint.pt ----------------------------------------------------------------------------------
def checkpoint_meta(state: dict, where: str) -> dict:
    """The decoded `meta` of a checkpoint (the run's identity), checked field by field."""
    raw = state.get("meta")
    if not isinstance(raw, str):
        raise RunFileError(f"{where}: 'meta' must be a JSON string, got {type_name(raw) if raw is not None else 'nothing'}")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise RunFileError(f"{where}: 'meta' is not valid JSON") from None
    expect_object(meta, f"{where} meta")
    for section, fields in META_FIELDS.items():
        if section not in meta:
            raise RunFileError(f"{where}: meta lacks '{section}'")
        expect_object(meta[section], f"{where} meta.{section}", "an object")
        expect_fields(meta[section], fields, f"{where} meta.{section}")
    if not all(isinstance(c, str) for c in meta["task"]["classes"]) or not meta["task"]["classes"]:
        raise RunFileError(f"{where}: meta.task.classes must be a non-empty list of names")
    unknown = set(meta) - _meta_keys()
    if unknown:
        raise RunFileError(f"{where}: meta holds unknown field(s) {', '.join(sorted(unknown))}")
    return meta


def _meta_keys() -> set[str]:
    """What a checkpoint's meta may hold: what bundle.make_metadata accepts (export passes it on)."""
    import inspect

    from .bundle import make_metadata

    return set(inspect.signature(make_metadata).parameters) - {"metrics", "created_at"}


def checkpoint_state(state: Any, where: str) -> dict:
    """A loaded checkpoint's structure (types and ranges of everything a resume or export reads)."""
    import torch

    expect_object(state, where, "a checkpoint dictionary")
    expect_fields(state, {"epoch": int, "position": int, "step": int, "trainable": dict, "optimizer": dict,
                          "best": dict, "running": dict}, where)
    if state["epoch"] < 0 or state["position"] < 0:
        raise RunFileError(f"{where}: negative epoch or position")
    if not state["trainable"] or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                         for k, v in state["trainable"].items()):
        raise RunFileError(f"{where}: 'trainable' must map tensor names to tensors")
    expect_fields(state["optimizer"], {"state": dict, "param_groups": list}, f"{where} optimizer")
    if not all(isinstance(g, dict) for g in state["optimizer"]["param_groups"]):
        raise RunFileError(f"{where}: optimizer param_groups must be objects")
    expect_fields(state["best"], {"top1": float, "epoch": int}, f"{where} best")
    expect_fields(state["running"], {"loss_sum": float, "correct": int, "seen": int, "seconds": float},
                  f"{where} running", optional=("loss_sum", "correct", "seen", "seconds"))
    if state["position"] and not isinstance(state.get("rng_cpu"), torch.Tensor):
        raise RunFileError(f"{where}: a mid-epoch checkpoint without its 'rng_cpu' state")
    checkpoint_meta(state, where)
    return state


def checkpoint_fits_config(state: dict, config, where: str) -> None:
    """The checkpoint belongs to the run its config.json describes (names, optimizer, epochs)."""
    meta = json.loads(state["meta"])
    for section, value in (("backbone", config.backbone), ("strategy", config.strategy), ("task", config.task)):
        if meta[section]["name"] != value:
            raise RunFileError(f"{where}: the checkpoint is of {section} '{meta[section]['name']}', "
                               f"config.json says '{value}'")
    adam = any("betas" in g for g in state["optimizer"]["param_groups"])
    kind = "adamw" if adam else "sgd"
    if kind != config.train.optimizer:
        raise RunFileError(f"{where}: the checkpoint holds {kind} optimizer state, config.json says "
                           f"'{config.train.optimizer}'")
    if state["epoch"] > config.train.epochs or (state["epoch"] == config.train.epochs and state["position"]):
        raise RunFileError(f"{where}: checkpoint at epoch {state['epoch']} is past the run's {config.train.epochs} epochs")


# -- metrics.jsonl ----------------------------------------------------------------------------------
def metrics_records(path: str | Path, *, missing_ok: bool = True) -> list[dict]:
    """The per-epoch records of metrics.jsonl, checked: one object per line, epochs 1, 2, 3, ..."""
    path = Path(path)
    if missing_ok and not path.exists() and not path.is_symlink():
        return []
    text = atomic.read_regular_text(path, "metrics log", RunFileError)
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise RunFileError(f"{path}, line {lineno}: not valid JSON") from None
        where = f"{path}, line {lineno}"
        expect_object(record, where)
        expect_fields(record, {"epoch": int}, where)
        for key in METRIC_NUMBERS:
            value = record.get(key)
            if value is not None and not is_kind(value, float):
                raise RunFileError(f"{where}: '{key}' must be a number, got {type_name(value)}")
        if record["epoch"] != len(records) + 1:
            raise RunFileError(f"{where}: epoch {record['epoch']}, expected {len(records) + 1}")
        records.append(record)
    return records


# -- summary.json -----------------------------------------------------------------------------------
def summary(path: str | Path) -> dict:
    """A finished run's summary.json: an object with at least task, backbone, strategy, test_top1."""
    path = Path(path)
    doc = expect_object(load_json_file(path, "run summary"), str(path))
    expect_fields(doc, SUMMARY_FIELDS, str(path))
    for key in ("val_top1", "test_mean_per_class", "seconds", "epochs", "selected_epoch"):
        value = doc.get(key)
        if value is not None and not is_kind(value, float):
            raise RunFileError(f"{path}: '{key}' must be a number, got {type_name(value)}")
    if not math.isfinite(doc["test_top1"]):
        raise RunFileError(f"{path}: 'test_top1' is not a finite number")
    return doc
