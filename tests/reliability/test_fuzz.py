"""Property-based fuzzing of every parser of untrusted files: random bytes and mutations of valid files
never raise anything but lspt's own errors (LsptError), never hang (hypothesis deadline), and a
header claiming a huge size is refused before anything that size is allocated.

Parsers: the bundle reader (bundle.read_header / bundle.load and the header's accessors), the
manifest loader (data.manifest.load_manifest on a mutated manifest.json), VTAB-1k split files,
CUB's txt files, VPT's json split files (plugins/datasets).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lspt_cli import bundle
from lspt_cli.errors import LsptError

# Modest by default (the suite stays fast); LSPT_FUZZ_EXAMPLES=5000 for a long hunt.
FUZZ = settings(max_examples=int(os.environ.get("LSPT_FUZZ_EXAMPLES", "100")), deadline=2000,
                suppress_health_check=list(HealthCheck), database=None)


def _valid_bundle(path: Path) -> bytes:
    meta = bundle.make_metadata(
        backbone={"name": "vit-tiny", "fingerprint": "sha256:" + "a" * 64, "source": "random", "weights": None},
        strategy={"name": "vpt-deep", "config": {"num_prompts": 2}},
        task={"name": "digits", "classes": [str(i) for i in range(10)], "benchmark": "custom"},
        data_config={"input_size": [3, 32, 32]},
        created_at="2024-01-01T00:00:00+00:00",
    )
    bundle.save(path, {"strategy.prompts": torch.randn(4, 2, 64), "head.weight": torch.randn(10, 64),
                       "head.bias": torch.randn(10)}, meta)
    return path.read_bytes()


@pytest.fixture(scope="module")
def valid_bundle(tmp_path_factory) -> bytes:
    return _valid_bundle(tmp_path_factory.mktemp("fuzz") / "b.safetensors")


def mutations(valid: bytes):
    """Byte-level mutations of a valid file: flips, overwrites, truncation, insertion, splicing."""
    n = len(valid)
    flip = st.tuples(st.integers(0, n - 1), st.integers(1, 255)).map(
        lambda t: valid[: t[0]] + bytes([valid[t[0]] ^ t[1]]) + valid[t[0] + 1 :])
    head_flip = st.tuples(st.integers(0, min(n, 400) - 1), st.integers(1, 255)).map(
        lambda t: valid[: t[0]] + bytes([valid[t[0]] ^ t[1]]) + valid[t[0] + 1 :])
    truncate = st.integers(0, n - 1).map(lambda k: valid[:k])
    overwrite = st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=16)).map(
        lambda t: valid[: t[0]] + t[1] + valid[t[0] + len(t[1]) :])
    insert = st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=16)).map(
        lambda t: valid[: t[0]] + t[1] + valid[t[0] :])
    length = st.integers(0, 2**64 - 1).map(lambda k: struct.pack("<Q", k) + valid[8:])
    return st.one_of(flip, head_flip, head_flip, truncate, overwrite, insert, length)


def header_mutations(valid: bytes):
    """Structural mutations of the JSON header (re-encoded with a correct length prefix)."""
    (n,) = struct.unpack("<Q", valid[:8])
    header, data = json.loads(valid[8 : 8 + n]), valid[8 + n :]
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=10,
    )
    paths = [(k,) for k in header] + [(k, f) for k in header if k != "__metadata__" for f in ("dtype", "shape", "data_offsets")]
    paths += [("__metadata__", k) for k in header["__metadata__"]]

    def apply(choice):
        path, value, as_json_text = choice
        doc = json.loads(json.dumps(header))
        target = doc
        for key in path[:-1]:
            target = target[key]
        if path[0] == "__metadata__" and len(path) == 2 and as_json_text:
            value = json.dumps(value)  # metadata must be str -> str: give it valid JSON of any shape
        target[path[-1]] = value
        raw = json.dumps(doc).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    return st.tuples(st.sampled_from(paths), json_values, st.booleans()).map(apply)


def _read_all(path: Path) -> None:
    """Everything lspt does with an untrusted bundle before building a model."""
    header = bundle.read_header(path)
    header.to_json()
    header.backbone, header.strategy, header.task, header.num_classes  # noqa: B018
    loaded = bundle.load(path)
    bundle.check_backbone(header, "sha256:" + "b" * 64, allow_mismatch=True)
    bundle.check_tensors(path, loaded.tensors, loaded.tensors)


def _check(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        _read_all(path)
    except LsptError:
        pass  # the only acceptable failure


def reaches_header_parser(data: bytes) -> bool:
    """read_header hands the header to the JSON parser only past its 8-byte length check: a length
    that fits the file (and safetensors' limit). Only such examples count in the README's totals."""
    if len(data) < 8:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return n <= bundle.MAX_HEADER_BYTES and n + 8 <= len(data)


def prefixed(header: bytes, tail: bytes = b"") -> bytes:
    """A valid 8-byte little-endian length prefix around `header`, then `tail` (the tensor data)."""
    return struct.pack("<Q", len(header)) + header + tail


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
# Entries that look like tensors, so examples also get past the JSON parser into the entry checks.
TENSOR_ENTRIES = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "x"]) | JSON_VALUES,
    "shape": st.lists(st.integers(-2, 2**40), max_size=4) | JSON_VALUES,
    "data_offsets": st.lists(st.integers(-4, 2**40), min_size=2, max_size=2) | JSON_VALUES,
})
RANDOM_HEADERS = st.one_of(
    st.binary(max_size=512),  # random bytes where the JSON should be
    st.binary(min_size=1, max_size=64).map(lambda b: b"{" + b),  # almost JSON
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),  # any JSON document
    st.dictionaries(st.text(max_size=8), TENSOR_ENTRIES, max_size=3).map(lambda d: json.dumps(d).encode()),
    st.tuples(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
              st.dictionaries(st.text(max_size=8), TENSOR_ENTRIES, max_size=2))
    .map(lambda t: json.dumps({"__metadata__": t[0], **t[1]}).encode()),
)


def test_bundle_reader_random_headers(tmp_path, tally):
    """Random and structured headers behind a valid length prefix: every example reaches the header
    parser (and the structured ones its entry checks). Random bytes without a prefix would stop at
    the 8-byte length check (the mutation fuzzer below covers that check)."""
    reached, stopped = [], []

    @FUZZ
    @given(st.tuples(RANDOM_HEADERS, st.binary(max_size=64)).map(lambda t: prefixed(*t)))
    def run(data):
        (reached if reaches_header_parser(data) else stopped).append(1)
        _check(tmp_path / "r.safetensors", data)

    run()
    assert reached and not stopped
    tally.fuzz("bundle reader: random headers behind a valid length prefix", len(reached))


def test_bundle_reader_mutated_bytes(tmp_path, valid_bundle, tally):
    reached = []

    @FUZZ
    @given(mutations(valid_bundle))
    def run(data):
        if reaches_header_parser(data):
            reached.append(1)
        _check(tmp_path / "m.safetensors", data)

    run()
    tally.fuzz("bundle reader: byte mutations of a valid bundle", len(reached))


def test_bundle_reader_mutated_header(tmp_path, valid_bundle, tally):
    count = []

    @FUZZ
    @given(header_mutations(valid_bundle))
    def run(data):
        count.append(1)
        _check(tmp_path / "h.safetensors", data)

    run()
    tally.fuzz("bundle reader: JSON header mutations", len(count))


def test_bundle_reader_hostile_headers(tmp_path, valid_bundle, tally):
    """Hand-made worst cases: deep nesting, huge numbers, a lying length, duplicate keys."""
    (n,) = struct.unpack("<Q", valid_bundle[:8])
    cases = {
        "deep nesting": b"[" * 100_000,
        "deep nesting in metadata": json.dumps({"__metadata__": {"lspt.schema": "1", "lspt.task": "[" * 100_000}}).encode(),
        "huge int shape": json.dumps({"t": {"dtype": "F32", "shape": [10**400], "data_offsets": [0, 4]}}).encode(),
        "huge offsets": json.dumps({"t": {"dtype": "F32", "shape": [1], "data_offsets": [2**63, 2**63 + 4]}}).encode(),
        "float shape": json.dumps({"t": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}).encode(),
        "bool shape": json.dumps({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}).encode(),
        "huge schema": json.dumps({"__metadata__": {"lspt.schema": "9" * 5000}}).encode(),
        "NaN schema": json.dumps({"__metadata__": {"lspt.schema": "NaN"}}).encode(),
        "metadata not a dict": json.dumps({"__metadata__": [1]}).encode(),
        "duplicate keys": b'{"__metadata__": {"lspt.schema": "1"}, "__metadata__": {"lspt.schema": "1"}}',
    }
    for name, raw in cases.items():
        data = struct.pack("<Q", len(raw)) + raw + b"\0" * 8
        path = tmp_path / "x.safetensors"
        path.write_bytes(data)
        with pytest.raises(LsptError):
            _read_all(path)
        tally.fuzz("bundle reader: hostile hand-made headers")
    del n


def test_header_claiming_a_huge_length_allocates_nothing(tmp_path, tally):
    """In a process limited to 1 GiB of address space beyond its start, headers claiming 100 MiB
    .. 16 EiB are refused from the 8-byte prefix and the file size alone, fast."""
    path = tmp_path / "liar.safetensors"
    script = textwrap.dedent(f"""
        import resource, struct, time, tracemalloc, sys
        from lspt_cli import bundle
        from lspt_cli.errors import BundleError
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), hard))
        for claim in (100 * 2**20, 2**32, 2**62, 2**64 - 1):
            open({str(path)!r}, 'wb').write(struct.pack('<Q', claim) + b'{{}}' * 1000)
            tracemalloc.start()
            t = time.perf_counter()
            try:
                bundle.read_header({str(path)!r})
                sys.exit('accepted a lying header')
            except BundleError:
                pass
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert peak < 1_000_000, (claim, peak)
            assert time.perf_counter() - t < 1.0
        print('ok')
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    tally.fuzz("bundle reader: header length lies (100 MiB .. 16 EiB) under RLIMIT_AS", 4)


def test_read_header_reads_at_most_the_header(tmp_path, valid_bundle, tally):
    """read_header reads 8 + header bytes, never the tensor data (bounded by the claim and the file)."""
    path = tmp_path / "big.safetensors"
    path.write_bytes(valid_bundle + b"\0" * (4 << 20))  # 4 MiB of trailing data
    (n,) = struct.unpack("<Q", valid_bundle[:8])
    import builtins

    sizes = []
    real_open = builtins.open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, k=-1):
            data = self.fh.read(k)
            sizes.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def spy_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Spy(fh) if str(file) == str(path) and "b" in mode else fh

    from lspt_cli import atomic

    real_open_regular = atomic.open_regular

    def spy_open_regular(file, *args, **kwargs):  # inputs are opened through the regular-file reader
        fh = real_open_regular(file, *args, **kwargs)
        return Spy(fh) if str(file) == str(path) else fh

    builtins.open, atomic.open_regular = spy_open, spy_open_regular
    try:
        bundle.read_header(path)
    finally:
        builtins.open, atomic.open_regular = real_open, real_open_regular
    assert sum(sizes) == 8 + n, sizes
    tally.fuzz("bundle reader: header read is bounded (no tensor data read)")


# -- manifests and split files ------------------------------------------------------------------------
@pytest.fixture
def digits_manifest(isolated_lspt_home):
    from lspt_cli.data.manifest import load_manifest, manifest_path

    load_manifest("digits")  # auto-prepared
    return manifest_path("digits")


def _json_mutations(doc):
    """A valid JSON document with one value somewhere replaced by arbitrary JSON."""
    def all_paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from all_paths(v, prefix + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node[:3]):
                yield from all_paths(v, prefix + (i,))

    paths = [p for p in all_paths(doc) if p]
    values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )

    def apply(choice):
        path, value, delete = choice
        new = json.loads(json.dumps(doc))
        target = new
        for key in path[:-1]:
            target = target[key]
        if delete:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return json.dumps(new, allow_nan=True).encode()

    return st.tuples(st.sampled_from(paths), values, st.booleans()).map(apply)


def test_manifest_loader_mutated(digits_manifest, tally):
    from lspt_cli.data.manifest import load_manifest

    original = digits_manifest.read_bytes()
    doc = json.loads(original)
    for split in doc["splits"]:
        doc["splits"][split] = doc["splits"][split][:3]  # small, so mutations are fast
    count = []

    @FUZZ
    @given(_json_mutations(doc) | mutations(json.dumps(doc).encode()))
    def run(data):
        count.append(1)
        digits_manifest.write_bytes(data)
        try:
            load_manifest("digits")
        except LsptError:
            pass

    run()
    tally.fuzz("manifest.json: structural and byte mutations", len(count))


VTAB_LINE = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(["images/a.jpg", "./images/a.jpg", "images\\a.jpg", "x"]),
              st.sampled_from(["0", "1", "46", "47", "-1", "1e3", "1.0", "1.5", "nan", "inf", "9" * 5000, "٣", "0x1"])).map(" ".join),
)


def test_vtab_split_files(tmp_path, tally):
    from plugins.datasets import vtab

    root = tmp_path / "dtd"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"")
    names = list(vtab.SPLIT_FILES.values())
    count = []

    @FUZZ
    @given(st.lists(st.lists(VTAB_LINE, max_size=5).map("\n".join) | st.binary(max_size=100), min_size=4, max_size=4))
    def run(contents):
        count.append(1)
        for name, content in zip(names, contents):
            (root / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        try:
            vtab.prepare_task("dtd", root)
        except LsptError:
            pass

    run()
    tally.fuzz("VTAB-1k split txt files", len(count))


CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def test_cub_txt_files(tmp_path, tally):
    from plugins.datasets import fgvc

    root = tmp_path / "CUB_200_2011"
    (root / "images" / "001.A").mkdir(parents=True)
    (root / "images" / "001.A" / "a.jpg").write_bytes(b"")
    (root / "images" / "001.A" / "b.jpg").write_bytes(b"")
    valid = {"images.txt": "1 001.A/a.jpg\n2 001.A/b.jpg\n", "image_class_labels.txt": "1 1\n2 1\n",
             "train_test_split.txt": "1 1\n2 0\n", "classes.txt": "1 001.A\n"}
    token = st.sampled_from(["1", "2", "0", "-1", "3", "1.0", "x", "001.A/a.jpg", "../a.jpg", "", " ", "\t", "\x00", "1e999"])
    mutated_file = st.tuples(st.sampled_from(CUB_FILES), st.lists(token, max_size=8).map(" ".join),
                             st.sampled_from(["replace", "append"]))
    count = []

    @FUZZ
    @given(st.lists(mutated_file, min_size=1, max_size=3) | st.tuples(st.sampled_from(CUB_FILES), st.binary(max_size=60)).map(lambda t: [t + ("raw",)]))
    def run(edits):
        count.append(1)
        contents = dict(valid)
        for name, text, how in edits:
            if how == "raw":
                (root / name).write_bytes(text)
                contents.pop(name)
            else:
                contents[name] = text if how == "replace" else contents[name] + text + "\n"
        for name, text in contents.items():
            (root / name).write_text(text)
        try:
            fgvc.prepare_cub(root)
        except LsptError:
            pass

    run()
    tally.fuzz("CUB txt files", len(count))


def test_vpt_json_split_files(tmp_path, tally):
    from plugins.datasets import common

    root = tmp_path / "vpt"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"")
    valid = {"train": {"a.jpg": 0}, "val": {"a.jpg": 1}, "test": {"a.jpg": 0}}
    count = []

    @FUZZ
    @given(st.sampled_from(["train", "val", "test"]),
           _json_mutations({"doc": {"a.jpg": 0, "b.jpg": 1}}) | st.binary(max_size=60) | st.just(b"[" * 50_000))
    def run(which, data):
        count.append(1)
        for name, doc in valid.items():
            (root / f"{name}.json").write_text(json.dumps(doc))
        if data.startswith(b'{"doc"'):
            data = json.dumps(json.loads(data)["doc"]).encode() if "doc" in json.loads(data) else b"{}"
        (root / f"{which}.json").write_bytes(data)
        try:
            common.read_vpt_json("cub", root, ("images", ""), 2, "layout")
        except LsptError:
            pass

    run()
    tally.fuzz("VPT json split files", len(count))
