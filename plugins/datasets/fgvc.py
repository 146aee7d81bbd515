"""The five FGVC sets (CUB-200-2011, NABirds, Oxford Flowers-102, Stanford Dogs, Stanford Cars).

Each `prepare_<name>(root, out_dir=None, *, val_fraction=0.1, seed=42)` checks the official layout
(layouts.py), reads the official train/test (Flowers: train/val/test) split and returns a Manifest.
Splits: VPT's train.json / val.json / test.json in ROOT win when present ("vpt-json"); else
Flowers uses its official val, the others carve val from train (10% per class, seed 42).
Classes are the class ids the images use, in id order, relabelled 0..K-1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import layouts
from .common import (
    VAL_FRACTION,
    VAL_SEED,
    carve_note,
    carve_val,
    check_files_exist,
    check_no_duplicates,
    finish,
    id_map,
    layout_error,
    parse_int,
    read_rows,
    read_vpt_json,
    require,
    vpt_json_present,
)


def _root(task: str, root: Path | None, marker: str, nested: tuple[str, ...], layout: str) -> Path:
    if root is None:
        raise layout_error(task, "--root is required", layout)
    root = Path(root).expanduser()
    require(task, root, layout, kind="folder")
    if not (root / marker).exists():
        for sub in nested:  # accept the archive's top folder's parent too
            if (root / sub / marker).exists():
                return root / sub
    return root


def _splits(
    task: str,
    root: Path,
    layout: str,
    train: list[tuple[str, int]],
    test: list[tuple[str, int]],
    val: list[tuple[str, int]] | None,
    num_classes: int,
    vpt_bases: tuple[str, ...],
    val_fraction: float,
    seed: int,
    official_note: str,
):
    """(train, val, test, split_source): VPT's json if present, else official val, else carved."""
    if vpt_json_present(root):
        splits, _ = read_vpt_json(task, root, vpt_bases, num_classes, layout)
        check_files_exist(task, root, [k for s in splits.values() for k, _ in s], layout)
        return splits["train"], splits["val"], splits["test"], "vpt-json"
    if val is not None:
        return train, val, test, official_note
    train, val = carve_val(train, val_fraction, seed)
    return train, val, test, f"{official_note}; val {carve_note(val_fraction, seed)}"


def _relabel(task: str, used: list[int], names: dict[int, str], source: Path, layout: str):
    """Sorted class ids -> (index map, class names)."""
    ids = sorted(set(used))
    missing = [i for i in ids if i not in names]
    if missing:
        raise layout_error(task, f"{source}: class id {missing[0]} is used by images but not listed", layout)
    return {cid: i for i, cid in enumerate(ids)}, [names[cid] for cid in ids]


# -- CUB-200-2011 and NABirds -----------------------------------------------------------------------
def _prepare_cub_like(task: str, root, layout: str, nested: tuple[str, ...], val_fraction: float, seed: int):
    root = _root(task, root, "images.txt", nested, layout)
    require(task, root / "images", layout, kind="folder")
    files = {n: require(task, root / n, layout) for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")}
    images = id_map(task, files["images.txt"], read_rows(task, files["images.txt"], 2, layout), layout)
    labels = id_map(task, files["image_class_labels.txt"], read_rows(task, files["image_class_labels.txt"], 2, layout), layout)
    is_train = id_map(task, files["train_test_split.txt"], read_rows(task, files["train_test_split.txt"], 2, layout), layout)
    class_rows = read_rows(task, files["classes.txt"], 2, layout, rest_joined=True)
    names: dict[int, str] = {}
    for cid, cname in class_rows:
        cid_i = parse_int(task, files["classes.txt"], cid, "class id", layout)
        if cid_i in names:
            raise layout_error(task, f"{files['classes.txt']}: duplicate class id {cid}", layout)
        names[cid_i] = cname.split(".", 1)[1] if cname[:3].isdigit() and "." in cname else cname
    check_no_duplicates(task, str(files["images.txt"]), images.values(), layout)
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        missing = [i for i in images if i not in table]
        if missing:
            raise layout_error(task, f"{files[name]}: no entry for image id {missing[0]} (listed in images.txt)", layout)
        extra = [i for i in table if i not in images]
        if extra:
            raise layout_error(task, f"{files[name]}: image id {extra[0]} is not in images.txt", layout)
    class_of = {i: parse_int(task, files["image_class_labels.txt"], labels[i], "class id", layout) for i in images}
    index, classes = _relabel(task, list(class_of.values()), names, files["image_class_labels.txt"], layout)
    train, test = [], []
    for image_id, rel in images.items():
        flag = is_train[image_id]
        if flag not in ("0", "1"):
            raise layout_error(task, f"{files['train_test_split.txt']}: flag {flag!r} of image {image_id} is not 0 or 1", layout)
        item = (f"images/{rel}", index[class_of[image_id]])
        (train if flag == "1" else test).append(item)
    check_files_exist(task, root, [k for k, _ in train + test], layout)
    train, val, test, source = _splits(
        task, root, layout, train, test, None, len(classes), ("images", ""), val_fraction, seed,
        "official train/test (train_test_split.txt)",
    )
    return finish(task, "fgvc", classes, root, train, val, test, source, layout)


def prepare_cub(root: Path | None, out_dir: Path | None = None, *, val_fraction: float = VAL_FRACTION, seed: int = VAL_SEED, **_: Any):
    return _prepare_cub_like("cub", root, layouts.CUB, ("CUB_200_2011",), val_fraction, seed)


def prepare_nabirds(root: Path | None, out_dir: Path | None = None, *, val_fraction: float = VAL_FRACTION, seed: int = VAL_SEED, **_: Any):
    return _prepare_cub_like("nabirds", root, layouts.NABIRDS, ("nabirds",), val_fraction, seed)


# -- .mat helpers -------------------------------------------------------------------------------------
def _loadmat(task: str, path: Path, layout: str) -> dict:
    import io

    import scipy.io

    from .common import read_split_file

    data = read_split_file(task, path, layout)  # a regular file only: a FIFO never hangs
    try:
        return scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=True)
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError, ... on a bad file
        raise layout_error(task, f"{path} is not a readable .mat file ({type(exc).__name__}: {exc})", layout) from None


def _field(task: str, mat: dict, key: str, path: Path, layout: str):
    import numpy as np

    if key not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__")))
        raise layout_error(task, f"{path} has no variable '{key}' (found: {found})", layout)
    return np.atleast_1d(mat[key])


def _ints(task: str, values, path: Path, what: str, layout: str) -> list[int]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise layout_error(task, f"{path}: {what} {v!r} is not a number", layout) from None
        if not f.is_integer():
            raise layout_error(task, f"{path}: {what} {v!r} is not an integer", layout)
        out.append(int(f))
    return out


def _strings(task: str, values, path: Path, what: str, layout: str) -> list[str]:
    import numpy as np

    out = []
    for v in values:
        while isinstance(v, np.ndarray):
            if v.size != 1:
                raise layout_error(task, f"{path}: a {what} entry is not a single string", layout)
            v = v.reshape(-1)[0]
        out.append(str(v))
    return out


# -- Oxford Flowers-102 ---------------------------------------------------------------------------------
def prepare_flowers(root: Path | None, out_dir: Path | None = None, *, val_fraction: float = VAL_FRACTION, seed: int = VAL_SEED, **_: Any):
    task, layout = "flowers", layouts.FLOWERS
    root = _root(task, root, "imagelabels.mat", ("flowers102", "102flowers", "oxford_flowers102"), layout)
    require(task, root / "jpg", layout, kind="folder")
    labels_path = require(task, root / "imagelabels.mat", layout)
    setid_path = require(task, root / "setid.mat", layout)
    labels = _ints(task, _field(task, _loadmat(task, labels_path, layout), "labels", labels_path, layout), labels_path, "label", layout)
    setid = _loadmat(task, setid_path, layout)
    ids = {k: _ints(task, _field(task, setid, k, setid_path, layout), setid_path, "image id", layout) for k in ("trnid", "valid", "tstid")}
    index, classes = _relabel(task, labels, {c: f"class_{c:03d}" for c in set(labels)}, labels_path, layout)
    n = len(labels)

    def items(key: str):
        out = []
        for image_id in ids[key]:
            if not 1 <= image_id <= n:
                raise layout_error(task, f"{setid_path}: '{key}' image id {image_id} is outside 1..{n} (imagelabels.mat)", layout)
            out.append((f"jpg/image_{image_id:05d}.jpg", index[labels[image_id - 1]]))
        return out

    train, val, test = items("trnid"), items("valid"), items("tstid")
    for key, its in (("trnid", train), ("valid", val), ("tstid", test)):
        check_no_duplicates(task, f"{setid_path} '{key}'", (k for k, _ in its), layout)
    check_files_exist(task, root, [k for k, _ in train + val + test], layout)
    train, val, test, source = _splits(
        task, root, layout, train, test, val, len(classes), ("", "jpg"), val_fraction, seed,
        "official train/val/test (setid.mat)",
    )
    return finish(task, "fgvc", classes, root, train, val, test, source, layout)


# -- Stanford Dogs ------------------------------------------------------------------------------------
def prepare_dogs(root: Path | None, out_dir: Path | None = None, *, val_fraction: float = VAL_FRACTION, seed: int = VAL_SEED, **_: Any):
    task, layout = "dogs", layouts.DOGS
    root = _root(task, root, "lists", ("StanfordDogs", "stanford_dogs"), layout)
    require(task, root / "Images", layout, kind="folder")
    raw: dict[str, list[tuple[str, int]]] = {}
    names: dict[int, str] = {}
    for split in ("train", "test"):
        path = require(task, root / "lists" / f"{split}_list.mat", layout)
        mat = _loadmat(task, path, layout)
        files = _strings(task, _field(task, mat, "file_list", path, layout), path, "file_list", layout)
        labels = _ints(task, _field(task, mat, "labels", path, layout), path, "label", layout)
        if len(files) != len(labels):
            raise layout_error(task, f"{path}: {len(files)} files but {len(labels)} labels", layout)
        check_no_duplicates(task, str(path), files, layout)
        for f, y in zip(files, labels):
            folder = f.replace("\\", "/").split("/")[0]
            names.setdefault(y, folder.split("-", 1)[1] if "-" in folder else folder)
        raw[split] = [(f"Images/{f}", y) for f, y in zip(files, labels)]
    index, classes = _relabel(task, [y for s in raw.values() for _, y in s], names, root / "lists", layout)
    train = [(k, index[y]) for k, y in raw["train"]]
    test = [(k, index[y]) for k, y in raw["test"]]
    check_files_exist(task, root, [k for k, _ in train + test], layout)
    train, val, test, source = _splits(
        task, root, layout, train, test, None, len(classes), ("Images", ""), val_fraction, seed,
        "official train/test (lists/*.mat)",
    )
    return finish(task, "fgvc", classes, root, train, val, test, source, layout)


# -- Stanford Cars ------------------------------------------------------------------------------------
def prepare_cars(root: Path | None, out_dir: Path | None = None, *, val_fraction: float = VAL_FRACTION, seed: int = VAL_SEED, **_: Any):
    task, layout = "cars", layouts.CARS
    root = _root(task, root, "devkit", ("stanford_cars", "StanfordCars"), layout)
    for folder in ("cars_train", "cars_test", "devkit"):
        require(task, root / folder, layout, kind="folder")
    train_annos = require(task, root / "devkit" / "cars_train_annos.mat", layout)
    test_annos = root / "cars_test_annos_withlabels.mat"
    if not test_annos.is_file() and (root / "devkit" / "cars_test_annos_withlabels.mat").is_file():
        test_annos = root / "devkit" / "cars_test_annos_withlabels.mat"
    if not test_annos.is_file() and (root / "devkit" / "cars_test_annos.mat").is_file():
        raise layout_error(
            task, f"missing file {test_annos}: devkit/cars_test_annos.mat has no labels", layout,
            hint="download cars_test_annos_withlabels.mat (the test labels) into ROOT",
        )
    require(task, test_annos, layout)
    meta_path = require(task, root / "devkit" / "cars_meta.mat", layout)
    class_names = _strings(task, _field(task, _loadmat(task, meta_path, layout), "class_names", meta_path, layout), meta_path, "class_names", layout)
    names = {i + 1: n for i, n in enumerate(class_names)}
    raw: dict[str, list[tuple[str, int]]] = {}
    for split, path, folder in (("train", train_annos, "cars_train"), ("test", test_annos, "cars_test")):
        annos = _field(task, _loadmat(task, path, layout), "annotations", path, layout)
        fields = annos.dtype.names or ()
        for needed in ("fname", "class"):
            if needed not in fields:
                raise layout_error(task, f"{path}: 'annotations' has no field '{needed}' (fields: {', '.join(fields)})", layout)
        files = _strings(task, annos["fname"], path, "fname", layout)
        labels = _ints(task, annos["class"], path, "class", layout)
        check_no_duplicates(task, str(path), files, layout)
        bad = [y for y in labels if y not in names]
        if bad:
            raise layout_error(task, f"{path}: class {bad[0]} is out of range 1..{len(names)} (devkit/cars_meta.mat)", layout)
        raw[split] = [(f"{folder}/{f}", y) for f, y in zip(files, labels)]
    index, classes = _relabel(task, [y for s in raw.values() for _, y in s], names, meta_path, layout)
    train = [(k, index[y]) for k, y in raw["train"]]
    test = [(k, index[y]) for k, y in raw["test"]]
    check_files_exist(task, root, [k for k, _ in train + test], layout)
    train, val, test, source = _splits(
        task, root, layout, train, test, None, len(classes), ("", "cars_train"), val_fraction, seed,
        "official train/test (devkit annotations)",
    )
    return finish(task, "fgvc", classes, root, train, val, test, source, layout)
