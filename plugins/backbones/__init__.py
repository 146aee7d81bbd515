"""Built-in backbones (registered through the `lspt` entry point `backbones`).

Only specs are registered here; the factories live in `timm_vit` and are imported when a backbone
is actually built, so this module never imports torch or timm.
"""

from lspt_cli import BackboneSpec, hookimpl
from lspt_cli.backbone_dims import HALF_MEAN_STD, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION

_FACTORY = "lspt_plugins.backbones.timm_vit:"

BACKBONES = (
    BackboneSpec(
        name="mae-vitb",
        description="MAE ViT-B/16 (timm vit_base_patch16_224.mae), self-supervised on ImageNet-1k; mean-norm readout (GaPT's; VPT's is mean-ln)",
        factory=_FACTORY + "load_mae_vitb",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=INTERPOLATION,  # MAE's pre-training and VPT/GaPT
        readout="mean-norm",
    ),
    BackboneSpec(
        name="mocov3-vitb",
        description="MoCo v3 ViT-B/16 (timm vit_base_patch16_224), self-supervised on ImageNet-1k; CLS readout",
        factory=_FACTORY + "load_mocov3_vitb",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=INTERPOLATION,  # MoCo v3's pre-training and VPT/GaPT
        readout="cls",
    ),
    BackboneSpec(
        name="sup-vitb",
        description="supervised ViT-B/16 (timm vit_base_patch16_224.augreg_in21k), ImageNet-21k; CLS readout",
        factory=_FACTORY + "load_sup_vitb",
        mean=HALF_MEAN_STD, std=HALF_MEAN_STD, interpolation=INTERPOLATION,  # what the augreg weights were trained with
        readout="cls",
    ),
    BackboneSpec(
        name="vit-tiny",
        description="tiny random-init ViT (32 px, patch 8, 4 blocks, dim 64) for demos and tests; CLS readout",
        factory=_FACTORY + "load_vit_tiny",
        input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=INTERPOLATION,
        readout="cls",
        embed_dim=64,
        depth=4,
    ),
)


@hookimpl
def lspt_register_backbones(register):
    for spec in BACKBONES:
        register(spec)
