"""The expected folder layout of every built-in dataset (pure data: imported by the registration)."""

CUB = """\
ROOT/  (CUB_200_2011/, from https://www.vision.caltech.edu/datasets/cub_200_2011/)
  images/<class>/<image>.jpg
  images.txt              <image id> <path under images/>
  image_class_labels.txt  <image id> <class id, 1-based>
  train_test_split.txt    <image id> <1 = train, 0 = test>
  classes.txt             <class id> <class name>
  train.json val.json test.json  (optional: VPT's splits)"""

NABIRDS = """\
ROOT/  (nabirds/, from https://dl.allaboutbirds.org/nabirds)
  images/<class>/<image>.jpg
  images.txt              <image uuid> <path under images/>
  image_class_labels.txt  <image uuid> <class id>
  train_test_split.txt    <image uuid> <1 = train, 0 = test>
  classes.txt             <class id> <class name>
  train.json val.json test.json  (optional: VPT's splits)"""

FLOWERS = """\
ROOT/  (from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/)
  jpg/image_00001.jpg ...  (102flowers.tgz)
  imagelabels.mat          'labels': 1 x N, 1-based class per image
  setid.mat                'trnid', 'valid', 'tstid': 1-based image ids (official train/val/test)
  train.json val.json test.json  (optional: VPT's splits)"""

DOGS = """\
ROOT/  (from http://vision.stanford.edu/aditya86/ImageNetDogs/)
  Images/<wnid>-<breed>/<image>.jpg  (images.tar)
  lists/train_list.mat     'file_list' (paths under Images/), 'labels' (1-based)  (lists.tar)
  lists/test_list.mat      same fields
  train.json val.json test.json  (optional: VPT's splits)"""

CARS = """\
ROOT/  (Stanford Cars: cars_train.tgz, cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat)
  cars_train/00001.jpg ...
  cars_test/00001.jpg ...
  devkit/cars_train_annos.mat         'annotations': struct array with fields fname, class (1-based)
  cars_test_annos_withlabels.mat      same, for cars_test/ (also accepted in devkit/)
  devkit/cars_meta.mat                'class_names': 1 x 196 cell of names
  train.json val.json test.json  (optional: VPT's splits)"""

VTAB_TASK = """\
ROOT/  (one VTAB-1k task folder, e.g. vtab-1k/{task}/, as NOAH's generator writes it)
  train800.txt  val200.txt  train800val200.txt  test.txt
      one line per image: images/<split>/000123.jpg <label, 0-based>  (.png too: lossless)
  images/..."""

VTAB = """\
ROOT/  (vtab-1k/: one folder per task, as NOAH's generator writes them)
  cifar/ (or cifar100/)  caltech101/  dtd/  oxford_flowers102/  oxford_iiit_pet/  svhn/  sun397/
  patch_camelyon/  eurosat/  resisc45/  diabetic_retinopathy/
  clevr_count/  clevr_dist/  dmlab/  kitti/  dsprites_loc/  dsprites_ori/  smallnorb_azi/  smallnorb_ele/
  each: train800.txt val200.txt train800val200.txt test.txt (lines `images/<split>/000123.jpg <label>`)
  NOAH's JPEGs are re-encoded (quality 75); for VPT's exact TFDS pixels write PNG files in the same
  layout with scripts/vtab_from_tfds.py"""

IMAGEFOLDER = """\
ROOT/
  train/<class>/*.jpg|png|...   (required; class folders define the classes)
  val/<class>/*                 (optional; else 10% of train per class, seed 42)
  test/<class>/*                (optional; else 20% of train per class, seed 0)"""

# VTAB-1k: task -> (group, number of classes, folder names accepted under a vtab-1k root).
VTAB_TASKS = {
    "cifar": ("natural", 100, ("cifar", "cifar100", "cifar_100", "cifar-100")),
    "caltech101": ("natural", 102, ("caltech101", "caltech_101", "caltech-101")),
    "dtd": ("natural", 47, ("dtd",)),
    "oxford_flowers102": ("natural", 102, ("oxford_flowers102", "flowers102", "oxford_flowers", "flowers")),
    "oxford_iiit_pet": ("natural", 37, ("oxford_iiit_pet", "oxford_pet", "pets", "pet")),
    "svhn": ("natural", 10, ("svhn", "svhn_cropped")),
    "sun397": ("natural", 397, ("sun397", "sun")),
    "patch_camelyon": ("specialized", 2, ("patch_camelyon", "camelyon", "pcam")),
    "eurosat": ("specialized", 10, ("eurosat",)),
    "resisc45": ("specialized", 45, ("resisc45", "resisc")),
    "diabetic_retinopathy": ("specialized", 5, ("diabetic_retinopathy", "retinopathy", "diabetic_retinopathy_detection")),
    "clevr_count": ("structured", 8, ("clevr_count", "clevr_count_all")),
    "clevr_dist": ("structured", 6, ("clevr_dist", "clevr_closest_object_distance")),
    "dmlab": ("structured", 6, ("dmlab",)),
    "kitti": ("structured", 4, ("kitti", "kitti_dist", "kitti_closest_vehicle_distance")),
    "dsprites_loc": ("structured", 16, ("dsprites_loc", "dsprites_location", "dsprites_label_x_position")),
    "dsprites_ori": ("structured", 16, ("dsprites_ori", "dsprites_orientation", "dsprites_label_orientation")),
    "smallnorb_azi": ("structured", 18, ("smallnorb_azi", "smallnorb_azimuth", "smallnorb_label_azimuth")),
    "smallnorb_ele": ("structured", 9, ("smallnorb_ele", "smallnorb_elevation", "smallnorb_label_elevation")),
}
