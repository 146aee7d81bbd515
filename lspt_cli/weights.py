"""Reading weights files safely and loading them strictly (docs/backbones.md; docs/guarantees.md: lspt never unpickles code).

- `read_checkpoint(path)`: a file -> its top-level object. safetensors through
  `safetensors.torch.load_file`; anything else (`.pth`, `.pth.tar`, `.tar`, `.pt`, `.bin`, ...)
  through `torch.load(map_location="cpu", weights_only=True)`. A pickle that needs more than
  tensors and plain containers is refused (never unpickled) with a `WeightsError`. One class is
  allowed besides: `argparse.Namespace`, which the authors' training checkpoints (DINO, iBOT,
  MAE `checkpoint*.pth`) pickle as their `args`; rebuilding it only sets attributes (no code runs),
  and its attributes must themselves be plain values or the file is refused as before.
- `read_state_dict(path)`: the same, unwrapped from a `{"state_dict": ...}` / `{"model": ...}`
  container, checked to hold only tensors.
- `strict_load(model, state)`: compares names and shapes first and raises one `WeightsError`
  listing every missing key, unexpected key and shape mismatch. There is no partial load.

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import WeightsError
from .messages import shorten_list

SAFETENSORS_SUFFIXES = (".safetensors",)
CONTAINER_KEYS = ("state_dict", "model")
PICKLED_ARGS = [argparse.Namespace]  # the training `args` of DINO/iBOT/MAE checkpoints (module docstring)
_MAX_LISTED = 12


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Load a weights file's top-level object without executing arbitrary pickled code."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(
            f"weights file not found: {path}",
            hint="pass an existing file with --weights FILE",
        )
    from .atomic import open_regular

    open_regular(path, "weights file", WeightsError).close()  # a directory, FIFO or device: refused, never a hang
    if path.name.endswith(SAFETENSORS_SUFFIXES):
        try:
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"cannot read safetensors file {path}: {exc}") from exc

    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(PICKLED_ARGS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found is None and "global" not in text.lower():  # corrupt, or not a pickle at all
            match = re.search(r"Unsupported [^\n]*", text)
            reason = match.group(0).strip() if match else ""
            raise WeightsError(
                f"cannot read weights file {path}: not a readable checkpoint"
                + (f" ({reason})" if reason else ""),
                hint="pass a safetensors file or a state dict saved with torch.save",
            ) from exc
        detail = f"it references {found.group(1)}" if found else ""
        raise WeightsError(
            f"refused to load {path}: it is a pickle that holds more than weights, and lspt only "
            f"unpickles tensors and plain containers (torch.load(weights_only=True)) because "
            f"unpickling arbitrary objects can run code" + (f"; {detail}" if detail else ""),
            hint="re-save only the model's state_dict (torch.save(model.state_dict(), ...)) or "
            "convert it to safetensors",
        ) from exc
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from exc


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Any]:
    """`{"state_dict": sd}` or `{"model": sd}` -> sd; check that every value is a tensor."""
    import torch

    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source} does not hold a state dict (found {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{source} is not a plain state dict: {_listing(bad)} are not tensors "
            f"(expected a file saved from model.state_dict(), optionally under a 'model' or 'state_dict' key)"
        )
    return {str(k): v for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A weights file -> a flat {name: tensor} dict (see `read_checkpoint`, `unwrap_state_dict`)."""
    return unwrap_state_dict(read_checkpoint(path), source=str(path))


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove `prefix` from every key that has it (other keys are kept unchanged)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def drop_keys(state: Mapping[str, Any], prefixes: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Split off the keys under any of `prefixes`; returns (kept, dropped names)."""
    prefixes = tuple(prefixes)
    kept, dropped = {}, []
    for key, value in state.items():
        if key.startswith(prefixes):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped


def check_state_dict(model, state: Mapping[str, Any], source: str = "weights") -> None:
    """Raise a WeightsError naming every missing/unexpected key and shape mismatch, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches: {_listing(mismatched)}")
    raise WeightsError(
        f"{source} does not match the model ({'; '.join(parts)})",
        hint="check that the file belongs to this backbone (--backbone) and is the format lspt "
        "documents for it; lspt never loads a partial state dict",
    )


def strict_load(model, state: Mapping[str, Any], source: str = "weights") -> None:
    """Load `state` into `model` only if every key and shape matches (see `check_state_dict`)."""
    check_state_dict(model, state, source)
    model.load_state_dict(dict(state), strict=True)


def _listing(items: list[str]) -> str:
    return shorten_list(items, _MAX_LISTED)
