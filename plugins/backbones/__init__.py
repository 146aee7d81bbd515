"""Built-in backbones (registered through the `lspt` entry point `backbones`).

Only specs are registered here; the factories live in `timm_vit` and `catalog` (the named
self-supervised checkpoints) and import torch and timm only when a backbone is actually built, so
this module never imports torch or timm.
"""

from lspt_cli import BackboneSpec, hookimpl
from lspt_cli.backbone_dims import HALF_MEAN_STD, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION

from . import catalog

_FACTORY = "lspt_plugins.backbones.timm_vit:"
_CACHED = "lspt_plugins.backbones.catalog:cached_weights"  # `lspt list backbones`: weights on disk?

BACKBONES = (
    BackboneSpec(
        name="mae-vitb",
        description="MAE ViT-B/16 (timm vit_base_patch16_224.mae), self-supervised on ImageNet-1k; mean-norm readout (GaPT's; VPT's is mean-ln)",
        factory=_FACTORY + "load_mae_vitb",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=INTERPOLATION,  # MAE's pre-training and VPT/GaPT
        readout="mean-norm",
        weights_files=("mae_pretrain_vit_base.pth",),
        weights_url="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
        layout=catalog.LAYOUTS["mae"], citation=catalog.MAE_PAPER,
        readout_note="MAE's linear probe reads the CLS token (facebookresearch/mae main_linprobe.py:72-74); "
                     "lspt uses mean-norm, GaPT's (VPT's is mean-ln, the vpt-* recipes)",
        find_weights=_CACHED,
    ),
    BackboneSpec(
        name="mocov3-vitb",
        description="MoCo v3 ViT-B/16 (timm vit_base_patch16_224), self-supervised on ImageNet-1k; CLS readout",
        factory=_FACTORY + "load_mocov3_vitb",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=INTERPOLATION,  # MoCo v3's pre-training and VPT/GaPT
        readout="cls",
        # GaPT used the self-supervised file, VPT the linear-probe one (same frozen encoder)
        weights_files=("vit-b-300ep.pth.tar", "linear-vit-b-300ep.pth.tar"),
        weights_url="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
        layout=catalog.LAYOUTS["mocov3"], citation=catalog.MOCOV3_PAPER, readout_note=catalog.MOCOV3_READOUT,
        find_weights=_CACHED,
    ),
    BackboneSpec(
        name="sup-vitb",
        description="supervised ViT-B/16 (timm vit_base_patch16_224.augreg_in21k), ImageNet-21k; CLS readout",
        factory=_FACTORY + "load_sup_vitb",
        mean=HALF_MEAN_STD, std=HALF_MEAN_STD, interpolation=INTERPOLATION,  # what the augreg weights were trained with
        readout="cls",
        weights_files=("model.safetensors",),
        weights_url="https://huggingface.co/timm/vit_base_patch16_224.augreg_in21k/resolve/main/model.safetensors",
        layout="timm's safetensors (the HF repo timm/vit_base_patch16_224.augreg_in21k; classifier dropped)",
        citation="Steiner et al., How to train your ViT? Data, Augmentation, and Regularization in Vision "
                 "Transformers, TMLR 2022 (arXiv 2106.10270)",
        readout_note="supervised: the classifier reads the CLS token; lspt: cls",
        find_weights=_CACHED,
    ),
    BackboneSpec(
        name="vit-tiny",
        description="tiny random-init ViT (32 px, patch 8, 4 blocks, dim 64) for demos and tests; CLS readout",
        factory=_FACTORY + "load_vit_tiny",
        input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=INTERPOLATION,
        readout="cls",
        embed_dim=64,
        depth=4,
        patch_size=8,
        layout="none needed (a seeded random init); --weights takes a timm-format state dict",
    ),
    # A family: `--backbone timm/<model>` builds any timm VisionTransformer by timm's name
    # (lspt_cli.plugins.Registry resolves the member; docs/backbones.md, "Bring your own ViT").
    # Its size, readout and normalisation come from timm's config for the model, not from here.
    BackboneSpec(
        name="timm/*",
        description="any timm VisionTransformer by timm's name, e.g. timm/vit_small_patch14_dinov2 (--weights FILE, "
                    "--img-size N); readout: cls+mean for DINOv2, mean-norm for *.mae, else cls",
        factory=_FACTORY + "load_timm_family",
        input_size=None,
        readout="cls",
        patch_size=None,
    ),
    *(
        BackboneSpec(
            name=entry.name,
            description=entry.description,
            factory=catalog.NamedLoader(entry.name),
            readout=entry.readout,
            embed_dim=entry.embed_dim,
            depth=entry.depth,
            num_prefix_tokens=entry.num_prefix_tokens,
            input_size=entry.input_size,
            mean=entry.mean, std=entry.std, interpolation=INTERPOLATION,  # ImageNet's, in every authors' code
            patch_size=entry.patch_size,
            weights_files=entry.local_files,
            weights_url=entry.download_url,
            layout=catalog.LAYOUTS[entry.family],
            citation=entry.citation,
            readout_note=entry.readout_note,
            find_weights=_CACHED,
        )
        for entry in catalog.ENTRIES
    ),
)


@hookimpl
def lspt_register_backbones(register):
    for spec in BACKBONES:
        register(spec)
