"""read_header's bounds and checks, each tested at its limit (benchmarks/mutation.py's bundle.py survivors).

Files are built byte by byte (8-byte little-endian header length, JSON header, tensor data), so
every expectation comes from the safetensors format itself, not from lspt's own writer. The 4 GiB
bundle and 16 MiB header limits are hit with sparse files (no disk space used, nothing slow to
write), so these tests stay among the fastest that benchmarks/mutation.py runs first.
"""

from __future__ import annotations

import json
import struct

import pytest

from lspt_cli import bundle
from lspt_cli.errors import BundleError

# The safetensors format's element sizes in bytes (github.com/huggingface/safetensors, Dtype).
SPEC_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
MIB, GIB = 2**20, 2**30


def _meta(**extra):
    return {"lspt.schema": "1", **extra}


def _write(path, entries: dict, data_len: int, metadata=None, header_len: int | None = None, pad_to: int | None = None):
    """A raw safetensors file: the header JSON (padded with spaces to `pad_to`), then `data_len` zero bytes.
    `header_len` overrides the length prefix (to lie about it)."""
    header = {"__metadata__": _meta() if metadata is None else metadata, **entries}
    text = json.dumps(header).encode()
    if pad_to is not None:
        assert len(text) <= pad_to
        text += b" " * (pad_to - len(text))
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + b"\0" * data_len)
    return path


def _f32(start: int, n: int) -> dict:
    return {"dtype": "F32", "shape": [n], "data_offsets": [start, start + 4 * n]}


@pytest.mark.parametrize("dtype", sorted(SPEC_SIZES))
def test_each_dtype_has_the_safetensors_element_size(tmp_path, dtype):
    size = SPEC_SIZES[dtype]
    ok = _write(tmp_path / "ok.safetensors", {"t": {"dtype": dtype, "shape": [3], "data_offsets": [0, 3 * size]}}, 3 * size)
    assert bundle.read_header(ok).tensors["t"]["data_offsets"] == [0, 3 * size]
    short = _write(tmp_path / "short.safetensors", {"t": {"dtype": dtype, "shape": [3], "data_offsets": [0, 3 * size - 1]}},
                   3 * size)
    with pytest.raises(BundleError, match="points outside"):
        bundle.read_header(short)


def test_the_bundle_size_limit_is_4_gib_exactly(tmp_path):
    path = _write(tmp_path / "big.safetensors", {"t": _f32(0, 2)}, 8)
    with open(path, "r+b") as f:  # sparse: no disk space
        f.truncate(4 * GIB)
    assert bundle.read_header(path).file_size == 4 * GIB
    with open(path, "r+b") as f:
        f.truncate(4 * GIB + 1)
    with pytest.raises(BundleError, match="too large"):
        bundle.read_header(path)


def test_the_header_size_limit_is_16_mib_exactly(tmp_path):
    """Sparse files of 17 MiB whose prefix claims 16 MiB (read: zeros are not JSON) or 16 MiB + 1 (refused unread)."""
    def claiming(n):
        path = _write(tmp_path / f"h{n}.safetensors", {}, 0, header_len=n)
        with open(path, "r+b") as f:
            f.truncate(17 * MIB)
        return path

    with pytest.raises(BundleError, match="not valid JSON"):  # within the limit: parsed
        bundle.read_header(claiming(16 * MIB))
    with pytest.raises(BundleError, match=r"header claims 16777217 bytes"):
        bundle.read_header(claiming(16 * MIB + 1))


def test_the_length_prefix_at_the_file_end(tmp_path):
    exact = _write(tmp_path / "exact.safetensors", {}, 0)  # the header ends the file: no tensors, valid
    assert bundle.read_header(exact).tensors == {}
    text_len = exact.stat().st_size - 8
    for extra in (1, 8, 9):  # the prefix claims a little more than the file has
        lie = _write(tmp_path / f"lie{extra}.safetensors", {}, 0, header_len=text_len + extra)
        with pytest.raises(BundleError, match=rf"header claims {text_len + extra} bytes, file has {text_len + 8}"):
            bundle.read_header(lie)
    eight = tmp_path / "eight.safetensors"  # a zero-length header: 8 bytes is not "truncated", it is empty JSON
    eight.write_bytes(struct.pack("<Q", 0))
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.read_header(eight)
    seven = tmp_path / "seven.safetensors"
    seven.write_bytes(b"\0" * 7)
    with pytest.raises(BundleError, match="only 7 bytes"):
        bundle.read_header(seven)


def test_a_640_byte_header_starts_like_a_pickle_and_is_read(tmp_path):
    path = _write(tmp_path / "p.safetensors", {"t": _f32(0, 1)}, 4, pad_to=640)
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert set(bundle.read_header(path).tensors) == {"t"}


@pytest.mark.parametrize("prefix", [b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK"])
def test_implausible_pickle_or_zip_prefixes_are_named(tmp_path, prefix):
    path = tmp_path / "x.safetensors"
    path.write_bytes(prefix + b"\xff" * 30)
    with pytest.raises(BundleError, match="looks like a pickle"):
        bundle.read_header(path)


def test_other_garbage_is_not_called_a_pickle(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"hello, I am a text file that is long enough")
    with pytest.raises(BundleError, match="not a safetensors file or truncated") as info:
        bundle.read_header(path)
    assert "pickle" not in str(info.value)


def test_tensor_data_must_end_inside_the_file(tmp_path):
    ok = _write(tmp_path / "ok.safetensors", {"a": _f32(0, 3), "b": _f32(12, 2)}, 20)  # b ends at the last byte
    assert bundle.read_header(ok).tensors["b"]["data_offsets"] == [12, 20]
    past = _write(tmp_path / "past.safetensors", {"a": _f32(0, 3), "b": _f32(12, 2)}, 19)
    with pytest.raises(BundleError, match="points outside"):
        bundle.read_header(past)
    # a span whose length is not numel * size, at a non-zero start (start + end would hide it at 0)
    wrong = _write(tmp_path / "wrong.safetensors", {"b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 24]}}, 24)
    with pytest.raises(BundleError, match="points outside"):
        bundle.read_header(wrong)
    empty = _write(tmp_path / "empty.safetensors", {"e": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, 0)
    assert bundle.read_header(empty).tensors["e"]["shape"] == [0]  # a zero-size tensor is valid


def test_adjacent_tensors_listed_out_of_order_are_valid_and_overlaps_are_not(tmp_path):
    adjacent = _write(tmp_path / "adj.safetensors", {"late": _f32(8, 2), "early": _f32(0, 2)}, 16)
    assert list(bundle.read_header(adjacent).tensors) == ["late", "early"]
    overlap = _write(tmp_path / "ovl.safetensors", {"a": _f32(0, 2), "b": _f32(4, 2)}, 12)
    with pytest.raises(BundleError, match="overlapping"):
        bundle.read_header(overlap)


@pytest.mark.parametrize("entry, message", [
    (1, "corrupt entry"),
    ({"dtype": "F32", "shape": [1]}, "corrupt entry"),
    ({"dtype": "F128", "shape": [1], "data_offsets": [0, 4]}, "invalid dtype or shape"),
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "invalid dtype or shape"),
    ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, "invalid dtype or shape"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "invalid dtype or shape"),
    ({"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}, "invalid dtype or shape"),
    ({"dtype": "F32", "shape": [1], "data_offsets": "0,4"}, "points outside"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}, "points outside"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}, "points outside"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "points outside"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, "points outside"),
])
def test_a_bad_tensor_entry_is_refused(tmp_path, entry, message):
    path = _write(tmp_path / "bad.safetensors", {"t": entry}, 8)
    with pytest.raises(BundleError, match=message):
        bundle.read_header(path)


@pytest.mark.parametrize("metadata, message", [
    ({"lspt.schema": "1", "n": 1}, r"expected str -> str"),
    (["lspt.schema"], r"expected str -> str"),
    ({"lspt.schema": "x"}, r"invalid lspt.schema 'x'"),
    ({"lspt.schema": "0"}, r"invalid lspt.schema 0"),
    ({"lspt.schema": "2"}, r"bundle schema 2 is newer"),
    ({"lspt.schema": "1", "lspt.task": "[1]"}, r"'lspt.task' must be a JSON object, got list"),
    ({"lspt.schema": "1", "lspt.task": "{"}, r"'lspt.task' is not valid JSON"),
    ({"lspt.schema": "1", "lspt.backbone": '{"name": 5}'}, r"'lspt.backbone' field 'name' must be a str"),
    ({"lspt.schema": "1", "lspt.task": '{"classes": "ab"}'}, r"field 'classes' must be a list"),
    ({"lspt.schema": "1", "lspt.task": '{"classes": [1, 2]}'}, r"list of class names"),
])
def test_bad_lspt_metadata_is_refused(tmp_path, metadata, message):
    path = _write(tmp_path / "bad.safetensors", {}, 0, metadata=metadata)
    with pytest.raises(BundleError, match=message):
        bundle.read_header(path)


def test_header_list_is_refused(tmp_path):
    path = tmp_path / "list.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with pytest.raises(BundleError, match="expected a JSON object"):
        bundle.read_header(path)


def test_a_minimal_bundle_reads_with_empty_defaults(tmp_path):
    """Only lspt.schema: every optional field absent is fine, and reads as empty."""
    header = bundle.read_header(_write(tmp_path / "min.safetensors", {}, 0, metadata={"lspt.schema": "1"}))
    assert (header.backbone, header.strategy, header.task, header.num_classes) == ({}, {}, {}, 0)
    assert header.meta("lspt.metrics", "absent") == "absent"
    bundle.check_backbone(header, "sha256:" + "b" * 64)  # no recorded fingerprint: nothing to compare
    assert bundle.read_header(_write(tmp_path / "v.safetensors", {}, 0, metadata={"lspt.schema": "1", "x": "[1]"})).meta("x") == "[1]"


def test_make_metadata_fields():
    md = bundle.make_metadata(backbone={"b": 1, "a": 2}, strategy={}, task={}, data_config={},
                              created_at="2020-01-02T03:04:05+00:00")
    assert md["lspt.backbone"] == '{"a": 2, "b": 1}'  # sorted keys: the same run writes the same bytes
    assert md["lspt.created_at"] == "2020-01-02T03:04:05+00:00" and md["lspt.metrics"] == "{}"
    assert "lspt.protocol" not in md
    now = bundle.make_metadata(backbone={}, strategy={}, task={}, data_config={}, protocol="paper")
    assert now["lspt.protocol"] == "paper" and now["lspt.created_at"].endswith("+00:00")
    assert now["lspt.created_at"][:4].isdigit() and now["lspt.created_at"][10] == "T"
    with pytest.raises(ValueError, match="make_metadata"):
        bundle.save("unused.safetensors", {}, {"format": "pt"})
