"""Every bad input, through the real CLI: exit code != 0, exactly one `Error:` line on stderr, no
traceback, nothing on stdout, nothing written; and nothing is ever unpickled.

Bundles (eval / predict / inspect), data (prepare-data, predict, eval, tune), recipes and options
(tune --dry-run), weights and checkpoints (tune --weights, tune --resume), plugins (real entry
points in a subprocess). In-process through the CLI app unless a real process is the point.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from lspt_cli import bundle as bundle_mod

from .conftest import TUNE_ARGS, assert_clean_error, lspt_env

MARKER_ENV = "LSPT_RELIABILITY_MARKER"


class Evil:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _rewrite(src: Path, dst: Path, *, tensors=None, meta=None) -> Path:
    """A copy of the bundle with some tensors and/or metadata entries replaced (a valid file)."""
    header = bundle_mod.read_header(src)
    data = load_file(str(src))
    metadata = dict(header.metadata)
    for key, value in (meta or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    data.update(tensors or {})
    save_file(data, str(dst), metadata=metadata)
    return dst


def _bundle_cases(ref: Path, tmp: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """name -> (bad bundle file, needles the Error line must contain)."""
    raw = ref.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    cases = {}

    def put(name, data: bytes, *needles):
        path = tmp / f"{name}.safetensors"
        path.write_bytes(data)
        cases[name] = (path, needles)

    put("truncated", raw[: len(raw) // 2], "truncated")
    put("truncated-in-header", raw[: 8 + n // 2], "truncated")
    put("zero-bytes", b"", "truncated")
    flipped = bytearray(raw)
    flipped[8] ^= 0x01  # '{' -> 'z': the JSON header is broken
    put("bit-flipped-header", bytes(flipped), "corrupt safetensors header")
    flipped = bytearray(raw)
    flipped[3] ^= 0x80  # header length claims ~2 GiB
    put("bit-flipped-length", bytes(flipped), "not a safetensors file")
    put("not-safetensors", b"hello, I am a text file\n" * 20, "not a safetensors file")
    put("pickle", pickle.dumps(Evil(tmp / "UNPICKLED"), protocol=2), "never unpickles")
    buf = __import__("io").BytesIO()
    torch.save({"x": torch.zeros(2), "evil": Evil(tmp / "UNPICKLED")}, buf)
    put("torch-save-zip", buf.getvalue(), "pickle/torch.save")
    cases["newer-schema"] = (_rewrite(ref, tmp / "newer.safetensors", meta={"lspt.schema": "99"}), ("newer",))
    cases["wrong-shapes"] = (_rewrite(ref, tmp / "shapes.safetensors", tensors={"head.weight": torch.zeros(10, 65)}), ("head.weight", "shape"))
    cases["missing-tensor"] = (_rewrite(ref, tmp / "missing.safetensors", tensors={"strategy.extra": torch.zeros(1)}), ("unexpected tensors",))
    header = bundle_mod.read_header(ref)
    other_fp = dict(header.backbone, fingerprint="sha256:" + "0" * 64)
    cases["other-backbone-fingerprint"] = (_rewrite(ref, tmp / "fp.safetensors", meta={"lspt.backbone": other_fp}), ("fingerprint",))
    cases["metadata-not-an-object"] = (_rewrite(ref, tmp / "md.safetensors", meta={"lspt.task": [1, 2]}), ("lspt.task",))
    cases["metadata-not-json"] = (_rewrite(ref, tmp / "mdj.safetensors", meta={"lspt.strategy": "{oops"}), ("not valid JSON",))
    plain = tmp / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    cases["plain-safetensors"] = (plain, ("not an lspt bundle",))
    folder = tmp / "folder.safetensors"
    folder.mkdir()
    cases["a-directory"] = (folder, ("directory",))
    cases["missing-file"] = (tmp / "absent.safetensors", ("no such bundle",))
    return cases


BUNDLE_CASES = ["truncated", "truncated-in-header", "zero-bytes", "bit-flipped-header", "bit-flipped-length",
                "not-safetensors", "pickle", "torch-save-zip", "newer-schema", "wrong-shapes", "missing-tensor",
                "other-backbone-fingerprint", "metadata-not-an-object", "metadata-not-json", "plain-safetensors",
                "a-directory", "missing-file"]
HEADER_ONLY = {"wrong-shapes", "missing-tensor", "other-backbone-fingerprint"}  # inspect shows these fine


@pytest.mark.parametrize("command", ["eval", "predict", "inspect"])
def test_bad_bundles(cli_err, reference_bundle, tmp_path, tally, command):
    cases = _bundle_cases(reference_bundle, tmp_path)
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 0).save(image)
    for name in BUNDLE_CASES:
        path, needles = cases[name]
        if command == "inspect" and name in HEADER_ONLY:
            code, out, err = cli_err("inspect", path, "--json")
            assert code == 0, err  # the header is fine; loading it onto a model is what fails
            continue
        args = {"eval": ("eval", path), "predict": ("predict", path, image), "inspect": ("inspect", path)}[command]
        code, out, err = cli_err(*args)
        try:
            assert_clean_error(code, out, err, *needles, exit_code=1)
        except AssertionError as exc:
            raise AssertionError(f"bundle case {name!r} via {command}: {exc}") from None
        assert not (tmp_path / "UNPICKLED").exists(), f"{name}: something was unpickled"
        tally.bad_input(f"bundle via lspt {command}")


def test_bundle_with_other_class_count_than_the_task(cli_err, reference_bundle, tmp_path, tally):
    tensors = load_file(str(reference_bundle))
    header = bundle_mod.read_header(reference_bundle)
    task = dict(header.task, classes=header.task["classes"][:5])
    bad = _rewrite(reference_bundle, tmp_path / "five.safetensors", meta={"lspt.task": task},
                   tensors={"head.weight": tensors["head.weight"][:5].clone(), "head.bias": tensors["head.bias"][:5].clone()})
    code, out, err = cli_err("eval", bad, "--task", "digits")
    assert_clean_error(code, out, err, "5 classes", "10", exit_code=1)
    tally.bad_input("bundle with another number of classes than the task (eval)")
    code, out, err = cli_err("eval", reference_bundle, "--task", "vtab/dtd")
    assert_clean_error(code, out, err, "vtab/dtd", "not prepared", exit_code=1)
    tally.bad_input("eval on a task that is not prepared")


# -- images -------------------------------------------------------------------------------------------
def _bad_images(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = tmp / "good.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good, quality=90)
    raw = good.read_bytes()
    cases = {}
    for name, data in {"zero-byte": b"", "truncated": raw[: len(raw) // 3], "corrupt": b"\xff\xd8\xff" + os.urandom(400),
                       "text-named-jpg": b"not an image at all"}.items():
        path = tmp / f"{name}.jpg"
        path.write_bytes(data)
        cases[name] = (path, "cannot decode image")
    (tmp / "dir.jpg").mkdir()
    cases["a-directory"] = (tmp / "dir.jpg", "is a directory")
    cases["missing"] = (tmp / "absent.jpg", "no such image file")
    return cases


def test_bad_images_via_predict(cli_err, reference_bundle, tmp_path, tally):
    for name, (path, needle) in _bad_images(tmp_path).items():
        code, out, err = cli_err("predict", reference_bundle, path)
        try:
            assert_clean_error(code, out, err, needle, str(path))
        except AssertionError as exc:
            raise AssertionError(f"image case {name!r}: {exc}") from None
        tally.bad_input("image via lspt predict")


def _odd_mode_images(tmp: Path) -> list[Path]:
    paths = []
    arr16 = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    images = {
        "gray.png": Image.new("L", (32, 32), 128),
        "rgba.png": Image.new("RGBA", (32, 32), (10, 20, 30, 0)),
        "la.png": Image.new("LA", (32, 32), (10, 200)),
        "palette.png": Image.new("P", (32, 32), 3),
        "bilevel.png": Image.new("1", (32, 32), 1),
        "cmyk.jpg": Image.new("CMYK", (32, 32), (0, 255, 0, 10)),
        "gray16.png": Image.fromarray(arr16),  # 16-bit PNG (I;16)
        "int32.tif": Image.fromarray(np.arange(32 * 32, dtype=np.int32).reshape(32, 32)),
        "float.tif": Image.fromarray(np.linspace(-1, 1, 32 * 32, dtype=np.float32).reshape(32, 32)),
    }
    for name, img in images.items():
        path = tmp / name
        img.save(path)
        paths.append(path)
    return paths


def test_non_rgb_images_are_converted_not_crashed(cli_err, reference_bundle, tmp_path, tally):
    paths = _odd_mode_images(tmp_path)
    code, out, err = cli_err("predict", reference_bundle, *paths, "--json")
    assert code == 0, err
    preds = json.loads(out)[str(reference_bundle)]
    assert set(preds) == {str(p) for p in paths}
    for path in paths:
        assert len(preds[str(path)]) == 5
        tally.bad_input(f"non-RGB image converted ({Image.open(path).mode})")


# -- data sets and manifests --------------------------------------------------------------------------
def _vtab(root: Path, *, drop=None, bad_label=False, duplicate=False, missing_image=False) -> Path:
    task = root / "dtd"
    (task / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(task / "images" / "a.jpg")
    Image.new("RGB", (8, 8)).save(task / "images" / "b.jpg")
    files = {"train800.txt": "images/a.jpg 0\n", "val200.txt": "images/b.jpg 1\n",
             "train800val200.txt": "images/a.jpg 0\nimages/b.jpg 1\n", "test.txt": "images/b.jpg 1\n"}
    if bad_label:
        files["train800.txt"] = "images/a.jpg 47\n"
    if duplicate:
        files["test.txt"] = "images/b.jpg 1\nimages/b.jpg 1\n"
    if missing_image:
        files["test.txt"] = "images/zzz.jpg 1\n"
    for name, text in files.items():
        if name != drop:
            (task / name).write_text(text)
    return task


DATA_CASES = {
    "missing split file": (dict(drop="val200.txt"), "val200.txt"),
    "label out of range": (dict(bad_label=True), "out of range"),
    "duplicate path in a split file": (dict(duplicate=True), "duplicate image path"),
    "listed image missing": (dict(missing_image=True), "missing"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_split_files_via_prepare_data(cli_err, tmp_path, tally, case, isolated_lspt_home):
    options, needle = DATA_CASES[case]
    task = _vtab(tmp_path / "vtab", **options)
    code, out, err = cli_err("prepare-data", "vtab/dtd", "--root", task)
    assert_clean_error(code, out, err, needle, exit_code=1)
    assert not list(Path(isolated_lspt_home).rglob("manifest.json")), "a manifest was written"
    tally.bad_input(f"split file: {case}")


def _digits_manifest(cli_err, reference_bundle) -> Path:
    code, out, err = cli_err("prepare-data", "digits")
    assert code == 0, err
    from lspt_cli.data.manifest import manifest_path

    return manifest_path("digits")


MANIFEST_MUTATIONS = {
    "duplicate path in a split": (lambda d: d["splits"]["test"].append(d["splits"]["test"][0]), "duplicate image"),
    "label out of range": (lambda d: d["splits"]["test"][0].__setitem__(1, 10), "out of range"),
    "label is infinite": (lambda d: d["splits"]["test"][0].__setitem__(1, float("inf")), "malformed manifest"),
    "split missing": (lambda d: d["splits"].pop("val"), "lacks split"),
    "classes not a list": (lambda d: d.__setitem__("classes", 7), "malformed manifest"),
    "newer schema": (lambda d: d.__setitem__("schema", 2), "schema"),
    "row outside the image array": (lambda d: d["splits"]["test"][0].__setitem__(0, "digits/999999"), "999999"),
}


@pytest.mark.parametrize("case", list(MANIFEST_MUTATIONS))
def test_mutated_manifest_via_eval(cli_err, reference_bundle, tally, case):
    path = _digits_manifest(cli_err, reference_bundle)
    doc = json.loads(path.read_text())
    mutate, needle = MANIFEST_MUTATIONS[case]
    mutate(doc)
    path.write_text(json.dumps(doc))
    code, out, err = cli_err("eval", reference_bundle)
    assert_clean_error(code, out, err, needle, exit_code=1)
    tally.bad_input(f"manifest: {case}")


@pytest.mark.parametrize("case", ["truncated manifest.json", "truncated image array", "image array of pickles"])
def test_corrupt_prepared_files_via_eval(cli_err, reference_bundle, tally, case):
    path = _digits_manifest(cli_err, reference_bundle)
    array = path.parent / "digits.npy"
    if case == "truncated manifest.json":
        path.write_bytes(path.read_bytes()[:200])
        needle = "manifest"
    elif case == "truncated image array":
        array.write_bytes(array.read_bytes()[:1000])
        needle = "digits.npy"
    else:
        np.save(array, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        needle = "digits.npy"
    code, out, err = cli_err("eval", reference_bundle)
    assert_clean_error(code, out, err, needle, exit_code=1)
    tally.bad_input(f"prepared data: {case}")


def test_corrupt_image_stops_training_naming_the_path(cli_err, tmp_path, tally):
    root = tmp_path / "photos"
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (i * 90, 0, 0)).save(root / split / cls / f"{i}.png")
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "photos")
    assert code == 0, err
    code, out, err = cli_err("tune", "--backbone", "vit-tiny", "--task", "photos", "--strategy", "linear",
                             "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run", "-q")
    assert_clean_error(code, out, err, str(bad), exit_code=1)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    tally.bad_input("truncated image inside a training set (tune)")


# -- recipes and options ------------------------------------------------------------------------------
RECIPES = {
    "malformed TOML": ("[train\nlr = 0.1\n", ("malformed TOML",)),
    "unknown key in [train]": ("[train]\nlrr = 0.1\n", ("unknown key 'lrr'", "allowed:", "epochs")),
    "unknown top-level key": ("strateg = 1\n", ("unknown key 'strateg'", "allowed:")),
    "wrong type": ('[train]\nlr = "0.1"\n', ("'lr'", "str")),
    "zero epochs": ("[train]\nepochs = 0\n", ("epochs",)),
    "negative batch size": ("[train]\nbatch_size = -4\n", ("batch_size",)),
    "a table that is a value": ("train = 5\n", ("[train]", "must be a table")),
    "bad task table": ("[tasks.digits]\nfoo = 1\n", ("[tasks.digits]",)),
    "not UTF-8": (b"\xff\xfe[train]\n", ("not UTF-8",)),
}


@pytest.mark.parametrize("case", list(RECIPES))
def test_bad_recipes(cli_err, tmp_path, tally, case):
    text, needles = RECIPES[case]
    recipe = tmp_path / "r.toml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out, err = cli_err("tune", *TUNE_ARGS, "--recipe", recipe, "--out", tmp_path / "run")
    assert_clean_error(code, out, err, str(recipe), *needles, exit_code=2)
    assert not (tmp_path / "run").exists()
    tally.bad_input(f"recipe: {case}")


OPTIONS = {
    "--epochs 0": (["--epochs", "0"], "epochs"),
    "--epochs -3": (["--epochs", "-3"], "epochs"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size"),  # the flag, as typed
    "--batch-size -1": (["--batch-size", "-1"], "--batch-size"),
    "--lr 0": (["--lr", "0"], "lr"),
    "--set unknown option": (["--set", "nonsense=1"], "allowed:"),
    "--set without =": (["--set", "num_prompts"], "KEY=VALUE"),
    "--set wrong type": (["--set", "num_prompts=lots"], "num_prompts"),
    "--optimizer unknown": (["--optimizer", "rmsprop"], "optimizer"),
    "--strategy unknown": (["--strategy", "vpt-deeep"], "unknown strategy"),
    "--backbone unknown": (["--backbone", "vit-huge"], "unknown backbone"),
    "--task unknown": (["--task", "nosuchtask"], "nosuchtask"),
    "--resume of a non-run": (["--resume", "{tmp}"], "not an lspt run directory"),
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_options(cli_err, tmp_path, tally, case):
    extra, needle = OPTIONS[case]
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    code, out, err = cli_err("tune", *TUNE_ARGS, *extra, "--out", tmp_path / "run")
    assert_clean_error(code, out, err, needle)
    assert code in (1, 2)
    assert not (tmp_path / "run").exists()
    tally.bad_input(f"option: {case}")


# -- weights and checkpoints --------------------------------------------------------------------------
def _tiny_state() -> dict:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=0).state_dict()


WEIGHTS = ["evil pickle (.pth)", "pickle with os.system", "truncated .pth", "random bytes .pth",
           "safetensors with wrong shapes", "missing file", "a directory"]


@pytest.mark.parametrize("case", WEIGHTS)
def test_bad_weights(cli_err, tmp_path, tally, case):
    marker = tmp_path / "UNPICKLED"
    path = tmp_path / "w.pth"
    needles: tuple[str, ...]
    if case == "evil pickle (.pth)":
        torch.save({"model": _tiny_state(), "hook": Evil(marker)}, path)
        needles = ("refused", "weights_only=True")
    elif case == "pickle with os.system":
        class System:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))
        torch.save({"state_dict": System()}, path)
        needles = ("refused", "weights_only=True")
    elif case == "truncated .pth":
        torch.save(_tiny_state(), path)
        path.write_bytes(path.read_bytes()[:5000])
        needles = ("cannot read weights file",)
    elif case == "random bytes .pth":
        path.write_bytes(os.urandom(3000))
        needles = ("cannot read weights file",)
    elif case == "safetensors with wrong shapes":
        state = _tiny_state()
        state["pos_embed"] = torch.zeros(1, 5, 64)
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        needles = ("pos_embed",)
    elif case == "missing file":
        path = tmp_path / "absent.pth"
        needles = ("not found",)
    else:
        path = tmp_path / "folder.pth"
        path.mkdir()
        needles = ("is a directory",)
    code, out, err = cli_err("tune", *TUNE_ARGS, "--weights", path, "--out", tmp_path / "run", "-q")
    assert_clean_error(code, out, err, str(path), *needles, exit_code=1)
    assert not marker.exists(), "the pickle was executed"
    assert not (tmp_path / "run" / "config.json").exists()
    tally.bad_input(f"weights: {case}")


@pytest.mark.parametrize("case", ["truncated checkpoint.pt", "pickle checkpoint.pt", "corrupt config.json",
                                  "checkpoint of other weights"])
def test_bad_run_directory_on_resume(cli_err, tmp_path, tally, case):
    run = tmp_path / "run"
    code, out, err = cli_err("tune", *TUNE_ARGS[:-4], "--epochs", "1", "--out", run, "-q")
    assert code == 0, err
    marker = tmp_path / "UNPICKLED"
    ckpt = run / "checkpoint.pt"
    if case == "truncated checkpoint.pt":
        ckpt.write_bytes(ckpt.read_bytes()[:3000])
        needles = ("unreadable checkpoint",)
    elif case == "pickle checkpoint.pt":
        state = torch.load(ckpt, weights_only=True)
        state["hook"] = Evil(marker)
        torch.save(state, ckpt)
        needles = ("unreadable checkpoint",)
    elif case == "corrupt config.json":
        (run / "config.json").write_text('{"train": {')
        needles = ("corrupt run config",)
    else:
        state = torch.load(ckpt, weights_only=True)
        meta = json.loads(state["meta"])
        meta["backbone"]["fingerprint"] = "sha256:" + "1" * 64
        state["meta"] = json.dumps(meta)
        torch.save(state, ckpt)
        needles = ("backbone weights differ",)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, out, err = cli_err("tune", "--resume", run, "-q")
    assert_clean_error(code, out, err, str(run), *needles)
    assert not marker.exists(), "the pickle was executed"
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before, "the run directory was modified"
    tally.bad_input(f"resume: {case}")


# -- plugins (real entry points, real processes) ------------------------------------------------------
PLUGINS = {
    "raises-at-import": ("raise RuntimeError('plugin exploded at import')", "plugin exploded at import"),
    "duplicate-name": (textwrap.dedent("""
        from lspt_cli import hookimpl, StrategySpec
        @hookimpl
        def lspt_register_strategies(register):
            register(StrategySpec(name="vpt-deep", description="again", factory="x:y"))
        """), "registered twice"),
    "wrong-type": (textwrap.dedent("""
        from lspt_cli import hookimpl
        @hookimpl
        def lspt_register_backbones(register):
            register({"name": "not-a-spec"})
        """), "expected"),
}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    for name, (code, _) in PLUGINS.items():
        module = "relplug_" + name.replace("-", "_")
        (site / f"{module}.py").write_text(code)
        dist = site / f"{module}-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(f"[lspt]\n{name} = {module}\n")
    return site


def _lspt(site: Path, home: Path, *args, **env):
    e = lspt_env(home, PYTHONPATH=str(site) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-m", "lspt_cli", *args], env=e, capture_output=True, text=True, timeout=60)


def test_broken_plugins_are_skipped_with_a_warning(plugin_site, tmp_path, tally):
    names = ",".join(PLUGINS)
    result = _lspt(plugin_site, tmp_path, "plugins", "--json", LSPT_LOAD_PLUGINS=names)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    doc = json.dumps(json.loads(result.stdout))
    for name, (_, needle) in PLUGINS.items():
        assert needle in doc and needle in result.stderr, (name, result.stderr)
    listed = _lspt(plugin_site, tmp_path, "list", "strategies", LSPT_LOAD_PLUGINS=names)
    assert listed.returncode == 0 and "vpt-deep" in listed.stdout and "Traceback" not in listed.stderr
    assert _lspt(plugin_site, tmp_path, "--help", LSPT_LOAD_PLUGINS=names).returncode == 0
    tally.bad_input("three broken plugins at once: skipped with warnings, CLI still works")


@pytest.mark.parametrize("name", list(PLUGINS))
def test_broken_plugin_is_one_error_in_strict_mode(plugin_site, tmp_path, tally, name):
    result = _lspt(plugin_site, tmp_path, "list", "strategies", LSPT_LOAD_PLUGINS=name, LSPT_STRICT_PLUGINS="1")
    assert_clean_error(result.returncode, result.stdout, result.stderr, PLUGINS[name][1], exit_code=1)
    tally.bad_input(f"plugin {name} (LSPT_STRICT_PLUGINS=1)")


def test_lspt_debug_shows_the_traceback(tmp_path, tally):
    """The other side of the contract: LSPT_DEBUG=1 turns the Error line into a traceback."""
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    quiet = subprocess.run([sys.executable, "-m", "lspt_cli", "inspect", str(bad)], env=lspt_env(tmp_path),
                           capture_output=True, text=True, timeout=60)
    assert_clean_error(quiet.returncode, quiet.stdout, quiet.stderr, "truncated", exit_code=1)
    debug = subprocess.run([sys.executable, "-m", "lspt_cli", "inspect", str(bad)],
                           env=lspt_env(tmp_path, LSPT_DEBUG="1"), capture_output=True, text=True, timeout=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "BundleError" in debug.stderr
    tally.bad_input("garbage bundle in a real process (+ LSPT_DEBUG=1 traceback)")
