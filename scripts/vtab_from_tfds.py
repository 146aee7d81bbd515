"""Write VTAB-1k from TFDS as lossless PNG files in NOAH's folder layout, for VPT's exact pixels.

NOAH's widely shared vtab-1k folders hold JPEG files re-encoded at quality 75; VPT instead resizes
the decoded TFDS tensors (KMnP/vpt@4410440 src/data/datasets/tf_dataset.py:148-152). This one-off
script asks VPT's own data code (its VTAB registry, the same split definitions train800 / val200 /
train800val200 / test) for each task's decoded images and saves them unchanged as PNG, so that
`lspt prepare-data vtab --root OUT` and protocol `paper` see VPT's pixels. lspt never imports it and
its tests do not run it (TensorFlow and TFDS are not lspt dependencies).

Usage (in an environment with tensorflow, tensorflow-datasets and VPT's requirements):

    git clone https://github.com/KMnP/vpt && (cd vpt && git checkout 4410440)
    python scripts/vtab_from_tfds.py --vpt ./vpt --tfds-dir ~/tensorflow_datasets --out ~/data/vtab-1k-png
    python scripts/vtab_from_tfds.py ... --task dtd --task svhn      # only some tasks
    lspt prepare-data vtab --root ~/data/vtab-1k-png

`--tfds-dir` is what VPT calls DATA.DATAPATH: TFDS downloads or reads the datasets there (some,
e.g. diabetic_retinopathy and sun397, need a manual download first: see VPT's VTAB_SETUP.md).
Per task it writes OUT/<task>/images/<split>/NNNNNN.png and OUT/<task>/<split>.txt
(`images/<split>/NNNNNN.png <label>` per line). train800val200 is written as its own images, as
VPT's registry yields it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# lspt's VTAB task name -> the dataset name VPT's tune_vtab.py / tf_dataset.py:36-56 use.
VPT_NAMES = {
    "cifar": 'cifar(num_classes=100)',
    "caltech101": "caltech101",
    "dtd": "dtd",
    "oxford_flowers102": "oxford_flowers102",
    "oxford_iiit_pet": "oxford_iiit_pet",
    "svhn": "svhn",
    "sun397": "sun397",
    "patch_camelyon": "patch_camelyon",
    "eurosat": "eurosat",
    "resisc45": "resisc45",
    "diabetic_retinopathy": 'diabetic_retinopathy(config="btgraham-300")',
    "clevr_count": 'clevr(task="count_all")',
    "clevr_dist": 'clevr(task="closest_object_distance")',
    "dmlab": "dmlab",
    "kitti": 'kitti(task="closest_vehicle_distance")',
    "dsprites_loc": 'dsprites(predicted_attribute="label_x_position",num_classes=16)',
    "dsprites_ori": 'dsprites(predicted_attribute="label_orientation",num_classes=16)',
    "smallnorb_azi": 'smallnorb(predicted_attribute="label_azimuth")',
    "smallnorb_ele": 'smallnorb(predicted_attribute="label_elevation")',
}
SPLITS = ("train800", "val200", "train800val200", "test")  # tf_dataset.py:177-182


def as_uint8(image, where: str):
    """The decoded image as HxWx3 uint8; anything that would need rounding is an error (no silent loss)."""
    import numpy as np

    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        if not (np.all(array == np.round(array)) and array.min() >= 0 and array.max() <= 255):
            raise SystemExit(f"Error: {where}: decoded image of dtype {array.dtype} is not integral in 0..255")
        array = array.astype(np.uint8)
    return array


def write_task(registry, task: str, tfds_dir: str, out: Path) -> None:
    from PIL import Image

    loader = registry.lookup("data." + VPT_NAMES[task])(data_dir=tfds_dir)
    tdir = out / task
    for split in SPLITS:
        data = loader.get_tf_data(split_name=split, batch_size=1, preprocess_fn=None, epochs=1,
                                  drop_remainder=False, for_eval=True, prefetch=1)
        rows = []
        for i, batch in enumerate(data):
            rel = f"images/{split}/{i:06d}.png"
            (tdir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(as_uint8(batch["image"].numpy()[0], f"{task}/{rel}")).save(tdir / rel)
            rows.append(f"{rel} {int(batch['label'].numpy()[0])}")
        (tdir / f"{split}.txt").write_text("\n".join(rows) + "\n")
        print(f"{task}: {split}: {len(rows)} images", file=sys.stderr)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vpt", required=True, help="a checkout of KMnP/vpt (4410440): its src/ is imported")
    parser.add_argument("--tfds-dir", required=True, help="TFDS data dir (VPT's DATA.DATAPATH)")
    parser.add_argument("--out", required=True, help="the vtab-1k folder to write")
    parser.add_argument("--task", action="append", choices=sorted(VPT_NAMES), help="repeat; default: all 19")
    args = parser.parse_args(argv)
    vpt = Path(args.vpt).expanduser().resolve()
    if not (vpt / "src" / "data" / "datasets" / "tf_dataset.py").is_file():
        raise SystemExit(f"Error: {vpt}: not a KMnP/vpt checkout (expected src/data/datasets/tf_dataset.py)")
    sys.path.insert(0, str(vpt))
    from src.data.datasets import tf_dataset  # registers every VTAB dataset class, imports tensorflow

    for task in args.task or list(VPT_NAMES):
        write_task(tf_dataset.Registry, task, str(Path(args.tfds_dir).expanduser()), Path(args.out).expanduser())


if __name__ == "__main__":
    main()
