"""Prompt bundles: one self-describing `.safetensors` file per (task, strategy, backbone).

A bundle holds the strategy's tensors (`strategy.*`) and the head (`head.*`), never the backbone,
plus string metadata (nested values JSON-encoded; `make_metadata` below lists the keys). The header is validated
by hand before safetensors sees the file, so a truncated, corrupt or foreign file is a clear
BundleError, and nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic
from .errors import BundleError
from .messages import shorten_list

SCHEMA_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a bundle's header is a few KiB (safetensors allows 100 MiB)
MAX_BUNDLE_BYTES = 4 * 2**30  # prompts + head; a bigger "bundle" is not one
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}
# Metadata keys whose values are JSON documents.
JSON_KEYS = ("lspt.versions", "lspt.backbone", "lspt.strategy", "lspt.task", "lspt.data_config", "lspt.metrics")


@dataclass
class BundleHeader:
    """What `lspt inspect` shows: metadata and tensor names/dtypes/shapes, no tensor data."""

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, dict[str, Any]]  # name -> {"dtype", "shape", "data_offsets"}
    file_size: int

    def meta(self, key: str, default: Any = None) -> Any:
        """A metadata value, JSON-decoded for the nested keys."""
        if key not in self.metadata:
            return default
        value = self.metadata[key]
        if key in JSON_KEYS:
            try:
                return json.loads(value)
            except (ValueError, RecursionError) as exc:
                raise BundleError(f"{self.path}: metadata '{key}' is not valid JSON ({exc})") from None
        return value

    @property
    def backbone(self) -> dict[str, Any]:
        return self.meta("lspt.backbone", {}) or {}

    @property
    def strategy(self) -> dict[str, Any]:
        return self.meta("lspt.strategy", {}) or {}

    @property
    def task(self) -> dict[str, Any]:
        return self.meta("lspt.task", {}) or {}

    @property
    def num_classes(self) -> int:
        return len(self.task.get("classes", []))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "file_size": self.file_size,
            "metadata": {k: self.meta(k) for k in self.metadata},
            "tensors": {k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in self.tensors.items()},
            "num_parameters": sum(_numel(v["shape"]) for v in self.tensors.values()),
        }


@dataclass
class Bundle:
    header: BundleHeader
    tensors: dict[str, Any] = field(default_factory=dict)  # name -> torch.Tensor


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def read_header(path: str | Path) -> BundleHeader:
    """Parse and validate the safetensors header without reading tensor data."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle file")
    if path.is_dir():
        raise BundleError(f"{path}: is a directory, expected a .safetensors bundle")
    size = path.stat().st_size
    with atomic.open_regular(path, "bundle file", BundleError, MAX_BUNDLE_BYTES) as fh:  # never a FIFO/device
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise BundleError(f"{path}: not a safetensors file (only {size} bytes; truncated?)")
        (header_len,) = struct.unpack("<Q", prefix)
        plausible = header_len <= MAX_HEADER_BYTES and header_len + 8 <= size
        # only an implausible length is a pickle: a 640-byte safetensors header also starts b"\x80\x02"
        if not plausible and (prefix[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or prefix[:2] == b"PK"):
            raise BundleError(
                f"{path}: looks like a pickle/torch.save file, not safetensors; lspt never unpickles bundles"
            )
        if not plausible:
            raise BundleError(f"{path}: not a safetensors file or truncated (header claims {header_len} bytes, file has {size})")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise BundleError(f"{path}: corrupt safetensors header (expected a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise BundleError(f"{path}: corrupt safetensors metadata (expected str -> str)")
    data_len = size - 8 - header_len
    tensors: dict[str, dict[str, Any]] = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise BundleError(f"{path}: corrupt entry for tensor '{name}' in the header")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise BundleError(f"{path}: tensor '{name}' has an invalid dtype or shape in the header")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
            or offsets[1] - offsets[0] != _numel(shape) * DTYPE_SIZES[dtype]
        ):
            raise BundleError(f"{path}: tensor '{name}' points outside the file (truncated or corrupt)")
        spans.append(tuple(offsets))
        tensors[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    spans.sort()
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise BundleError(f"{path}: corrupt safetensors header (overlapping tensors)")
    result = BundleHeader(path=path, metadata=metadata, tensors=tensors, file_size=size)
    _check_lspt_metadata(result)
    return result


def _check_lspt_metadata(header: BundleHeader) -> None:
    md = header.metadata
    if "lspt.schema" not in md:
        raise BundleError(f"{header.path}: a safetensors file but not an lspt bundle (no 'lspt.schema' metadata)")
    try:
        schema = int(md["lspt.schema"])
    except ValueError:
        raise BundleError(f"{header.path}: invalid lspt.schema {md['lspt.schema']!r}") from None
    if schema > SCHEMA_VERSION:
        raise BundleError(
            f"{header.path}: bundle schema {schema} is newer than this lspt understands ({SCHEMA_VERSION})",
            hint="upgrade lspt: pip install -U lspt",
        )
    if schema < 1:
        raise BundleError(f"{header.path}: invalid lspt.schema {schema}")
    for key in JSON_KEYS:
        value = header.meta(key)  # raises on invalid JSON
        if value is not None and not isinstance(value, dict):
            raise BundleError(f"{header.path}: metadata '{key}' must be a JSON object, got {type(value).__name__}")
    # the fields lspt reads must have their types (a hand-edited or foreign file may not)
    checks = (
        ("lspt.backbone", "name", str), ("lspt.backbone", "fingerprint", str), ("lspt.strategy", "name", str),
        ("lspt.strategy", "config", dict), ("lspt.task", "name", str), ("lspt.task", "classes", list),
        ("lspt.task", "benchmark", str), ("lspt.backbone", "readout", str), ("lspt.task", "style", str),
    )
    for key, field_name, kind in checks:
        value = (header.meta(key) or {}).get(field_name)
        if value is not None and not isinstance(value, kind):
            raise BundleError(f"{header.path}: metadata '{key}' field '{field_name}' must be a {kind.__name__}")
    classes = (header.meta("lspt.task") or {}).get("classes")
    if classes is not None and not all(isinstance(c, str) for c in classes):
        raise BundleError(f"{header.path}: metadata 'lspt.task' field 'classes' must be a list of class names (strings)")


def make_metadata(
    *,
    backbone: dict[str, Any],
    strategy: dict[str, Any],
    task: dict[str, Any],
    data_config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    created_at: str | None = None,
    protocol: str | None = None,
    precision: str | None = None,
) -> dict[str, str]:
    """Build a bundle's str -> str metadata (its keys are this function's)."""
    from . import __version__

    versions = {"lspt": __version__}
    for module in ("timm", "torch", "safetensors"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            pass
    created = created_at or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    md = {
        "format": "pt",
        "lspt.schema": str(SCHEMA_VERSION),
        "lspt.versions": versions,
        "lspt.backbone": backbone,
        "lspt.strategy": strategy,
        "lspt.task": task,
        "lspt.data_config": data_config,
        "lspt.metrics": metrics or {},
        "lspt.created_at": created,
    }
    if protocol is not None:  # the training protocol (`paper` | `lspt`, docs/protocol.md)
        md["lspt.protocol"] = protocol
    if precision is not None:  # what the run computed in: "bf16" or "fp32" (`amp = auto` resolves to either)
        md["lspt.precision"] = precision
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in md.items()}


def save(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str]) -> int:
    """Write a bundle atomically; returns its size in bytes."""
    from safetensors.torch import save as st_save

    if "lspt.schema" not in metadata:
        raise ValueError("bundle metadata must come from make_metadata()")
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = st_save(contiguous, metadata=metadata)
    atomic.write_bytes(path, data)
    return len(data)


def load(path: str | Path) -> Bundle:
    """Validate the header, then read the tensors (safetensors: no code execution possible)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    header = read_header(path)
    try:
        with atomic.open_regular(path, "bundle file", BundleError, MAX_BUNDLE_BYTES) as fh:
            tensors = st_load(fh.read())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{path}: unreadable safetensors data ({exc})") from None
    return Bundle(header=header, tensors=tensors)


def check_tensors(path: str | Path, tensors: dict[str, Any], expected: dict[str, Any]) -> None:
    """Strict comparison with a model's trainable state: names and shapes must match exactly."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors [{shorten_list(missing, quote=True)}]")
        if unexpected:
            parts.append(f"unexpected tensors [{shorten_list(unexpected, quote=True)}]")
        raise BundleError(f"{path}: does not fit the model: " + "; ".join(parts))
    for name, ref in expected.items():
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise BundleError(
                f"{path}: tensor '{name}' has shape {tuple(tensors[name].shape)}, the model expects {tuple(ref.shape)}"
            )


def recorded_img_size(header: BundleHeader) -> tuple[int, int] | None:
    """(height, width) the bundle was trained at (`lspt.backbone.img_size`), or None for bundles
    older than the record (they load at the backbone's own size)."""
    value = header.backbone.get("img_size")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise BundleError(f"{header.path}: metadata 'lspt.backbone' field 'img_size' must be [height, width] in pixels")
    return int(value[0]), int(value[1])


def size_text(size: tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def check_img_size(header: BundleHeader, img_size: tuple[int, int], allow_mismatch: bool = False) -> bool:
    """Refuse a backbone built for another input size than the bundle's (unless
    --allow-img-size-mismatch); True when the sizes differ (and that was allowed)."""
    recorded = recorded_img_size(header)
    if recorded is None or tuple(recorded) == tuple(img_size):
        return False
    if not allow_mismatch:
        raise BundleError(
            f"{header.path}: trained at --img-size {size_text(recorded)}, but the backbone is built for "
            f"--img-size {size_text(tuple(img_size))}",
            hint=f"leave --img-size out to load at {size_text(recorded)}, or pass --allow-img-size-mismatch",
        )
    return True


def check_backbone(header: BundleHeader, fingerprint: str, allow_mismatch: bool = False) -> None:
    """Refuse a bundle trained on other backbone weights (unless --allow-backbone-mismatch)."""
    recorded = header.backbone.get("fingerprint")
    if recorded and recorded != fingerprint and not allow_mismatch:
        raise BundleError(
            f"{header.path}: trained on backbone '{header.backbone.get('name')}' with fingerprint "
            f"{recorded[:19]}..., but the loaded weights have {fingerprint[:19]}...",
            hint="load the same weights (--weights FILE) or pass --allow-backbone-mismatch",
        )
