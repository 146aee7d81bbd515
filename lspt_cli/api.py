"""lspt's Python API (re-exported as the `lspt` package): use bundles from Python, or prompt-tune a
timm ViT in your own training loop.

    import lspt
    model = lspt.load("cub.safetensors")                 # a ready nn.Module: frozen backbone + prompts + head
    model.predict(["bird.jpg"], top_k=3)                 # [[{"label", "index", "probability"}, ...]]
    many = lspt.load_many(["cub.safetensors", "dogs.safetensors"])   # one backbone, several tasks
    many.predict(["x.jpg"])                              # {"cub": [[...]], "dogs": [[...]]}
    net = lspt.wrap(timm_vit, strategy="vpt-deep", num_classes=10, num_prompts=10)
    ...                                                  # train net.trainable_parameters() in your loop
    net.save("mine.safetensors", classes=[...])          # an lspt bundle: `lspt eval`, `lspt serve`

Everything here reuses the CLI's code paths: bundles load strictly through
`engine.restore.model_from_bundle` (fingerprint, tensor names and shapes checked, never unpickled),
images are preprocessed by `engine.restore.eval_transform` (the bundle's eval transform), several
bundles on one backbone run through `prompted.forward_shared`, and `save` writes what `lspt tune`
writes (`bundle.make_metadata` + `bundle.save`). docs/python-api.md documents it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

import torch
from torch import nn

from .backbone import FrozenBackbone
from .errors import UsageError
from .prompted import PromptedViT, build_strategy, forward_shared

__all__ = ["PromptedModel", "MultiTaskModel", "load", "load_many", "wrap", "ImageInput"]

# What predict() accepts per image: a file path, encoded bytes, a PIL image, or a CHW tensor that is
# already preprocessed (the bundle's transform applied); a [B, C, H, W] tensor is a whole batch.
if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

ImageInput = Union[str, os.PathLike, bytes, "PILImage", torch.Tensor]


class PromptedModel(nn.Module):
    """A frozen ViT + one task's prompts and head: `forward(images) -> logits`, `predict`, `save`.

    Attributes: `classes` (class names, None until known for a freshly wrapped model), `task`
    (the bundle's task metadata), `header` (the `BundleHeader` it was loaded from, or None),
    `transform` (PIL image -> normalised tensor, the bundle's eval pipeline), `model` (the
    underlying `PromptedViT`: `.backbone`, `.strategy`, `.head`).
    Only the strategy and the head are trainable; `train()` never takes the backbone out of eval mode.
    """

    def __init__(self, model: PromptedViT, strategy_name: str, *, classes: Sequence[str] | None = None,
                 task: Mapping[str, Any] | None = None, header=None):
        super().__init__()
        self.model = model
        self.strategy_name = strategy_name
        self.header = header
        self.task = dict(task or {})
        self.classes = list(classes) if classes is not None else None
        if self.classes is not None and len(self.classes) != model.head.out_features:
            raise UsageError(f"{len(self.classes)} class names for a head with {model.head.out_features} outputs")

    # -- the model ----------------------------------------------------------------------------
    @property
    def backbone(self) -> FrozenBackbone:
        return self.model.backbone

    @property
    def num_classes(self) -> int:
        return int(self.model.head.out_features)

    @property
    def fingerprint(self) -> str:
        return self.model.backbone.fingerprint

    @property
    def transform(self):
        from .engine.restore import eval_transform

        return eval_transform(self.task, self.model.backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [B, C, H, W] -> logits [B, num_classes]."""
        return self.model(images)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The prompts (and gates, temperatures, LSTM) and the head: what an optimizer should get."""
        return self.model.trainable_parameters()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly what a bundle stores: `strategy.*` and `head.*`."""
        return self.model.trainable_state_dict()

    # -- inference ------------------------------------------------------------------------------
    def preprocess(self, images: ImageInput | Iterable[ImageInput]) -> torch.Tensor:
        """Paths, bytes, PIL images or tensors -> one [B, C, H, W] batch on the model's device."""
        return _preprocess(images, self.transform, _device_of(self))

    @torch.no_grad()
    def predict(self, images: ImageInput | Iterable[ImageInput], top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Top-k {"label", "index", "probability"} per image, in order (the same as `lspt predict`)."""
        from .engine.restore import top_predictions

        top_k = _check_top_k(top_k)
        batch = self.preprocess(images)
        was_training = self.training
        self.eval()
        try:
            logits = self.model(batch)
        finally:
            self.train(was_training)
        return top_predictions(logits, self._class_names(), top_k)

    def _class_names(self) -> list[str]:
        return self.classes if self.classes is not None else [str(i) for i in range(self.num_classes)]

    # -- saving ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, classes: Sequence[str] | None = None, *, task: str | None = None,
             benchmark: str | None = None, style: str | None = None, metrics: Mapping[str, Any] | None = None,
             precision: str | None = None) -> Path:
        """Write an lspt bundle (the strategy's tensors + head + metadata, never the backbone), atomically.

        `classes`: the class names, in head order (default: the model's). `task`: the task name
        `lspt eval` evaluates on by default (default: the model's, else the file's stem).
        `benchmark`/`style`: which eval transform the bundle records (default: the model's, else
        "custom", i.e. resize + centre crop). `precision`: what you trained in, "fp32" or "bf16"
        (default: the loaded bundle's, else "fp32"), recorded as `lspt.precision`. Returns the path.
        """
        from . import bundle

        path = Path(path)
        if path.suffix != ".safetensors":
            raise UsageError(f"{path}: a bundle file name ends in .safetensors")
        names = list(classes) if classes is not None else self.classes
        if names is None:
            raise UsageError("save() needs the class names: model.save(path, classes=[...])")
        if len(names) != self.num_classes or not all(isinstance(c, str) for c in names):
            raise UsageError(f"save() needs {self.num_classes} class names (strings), one per head output; got {len(names)}")
        backbone = self.model.backbone
        info = {**backbone.identity(), "readout": self.model.readout}  # name, fingerprint, weights, img_size, ...
        if info.get("weights") is None:
            info.pop("weights", None)
        task_info = {k: v for k, v in self.task.items() if k not in ("classes",)}
        task_info["name"] = task or task_info.get("name") or path.stem
        task_info["classes"] = names
        task_info["benchmark"] = benchmark or task_info.get("benchmark") or "custom"
        if style or task_info.get("style"):
            from .data.transforms import check_style

            task_info["style"] = check_style(style or task_info["style"])
        else:
            task_info.pop("style", None)
        meta = bundle.make_metadata(
            backbone=info, strategy={"name": self.strategy_name, "config": self.model.strategy.config()},
            task=task_info, data_config=dict(backbone.data_config), metrics=dict(metrics or {}),
            protocol=self.header.meta("lspt.protocol") if self.header is not None else None,  # a re-saved bundle keeps it
            precision=_check_precision(precision or (self.header.meta("lspt.precision") if self.header is not None else None) or "fp32"),
        )
        bundle.save(path, self.model.trainable_state_dict(), meta)
        self.classes, self.task = names, task_info
        return path

    def extra_repr(self) -> str:
        return (f"strategy={self.strategy_name!r}, backbone={self.model.backbone.name!r}, "
                f"num_classes={self.num_classes}, trainable={sum(p.numel() for p in self.trainable_parameters())}")


class MultiTaskModel(nn.Module):
    """Several bundles on ONE shared frozen backbone. `tasks` maps task name -> PromptedModel.

    `forward(images)` runs every task on the same preprocessed images in one backbone pass per block
    (`prompted.forward_shared`) and returns {task: logits}; `predict(images)` returns {task: top-k
    lists}, preprocessing once per distinct eval transform.
    """

    def __init__(self, tasks: Mapping[str, PromptedModel]):
        super().__init__()
        if not tasks:
            raise UsageError("load_many needs at least one bundle")
        self.tasks = nn.ModuleDict(dict(tasks))
        backbones = {id(m.model.backbone) for m in self.tasks.values()}
        if len(backbones) != 1:
            raise UsageError("a MultiTaskModel's tasks must share one backbone object")

    @property
    def backbone(self) -> FrozenBackbone:
        return next(iter(self.tasks.values())).model.backbone

    @property
    def classes(self) -> dict[str, list[str]]:
        return {name: m._class_names() for name, m in self.tasks.items()}

    def __getitem__(self, name: str) -> PromptedModel:
        if name not in self.tasks:
            raise KeyError(f"unknown task {name!r}; loaded: {', '.join(self.tasks)}")
        return self.tasks[name]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        names = list(self.tasks)
        logits = forward_shared([self.tasks[n].model for n in names], images)
        return dict(zip(names, logits))

    @torch.no_grad()
    def predict(self, images: ImageInput | Iterable[ImageInput], top_k: int = 5) -> dict[str, list[list[dict[str, Any]]]]:
        from .engine.restore import top_predictions, transform_key

        top_k = _check_top_k(top_k)
        images = _as_list(images)
        names = list(self.tasks)
        families: dict[tuple[str, str], list[str]] = {}
        for n in names:
            families.setdefault(transform_key(self.tasks[n].task), []).append(n)
        out: dict[str, list] = {}
        was_training = self.training
        self.eval()
        try:
            for members in families.values():
                batch = self.tasks[members[0]].preprocess(images)
                for n, lg in zip(members, forward_shared([self.tasks[n].model for n in members], batch)):
                    out[n] = top_predictions(lg, self.tasks[n]._class_names(), top_k)
        finally:
            self.train(was_training)
        return {n: out[n] for n in names}


def load(bundle: str | os.PathLike, weights: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
         backbone: FrozenBackbone | PromptedModel | None = None, allow_backbone_mismatch: bool = False) -> PromptedModel:
    """Load a bundle onto its backbone: a ready `PromptedModel` in eval mode.

    `weights`: the backbone's weights file (default: the file the bundle was trained with when it
    still exists, else the cache dir's, as `lspt predict`). `backbone`: share an already loaded
    backbone (another model's) instead of loading one. A bundle trained on other weights (fingerprint)
    is refused unless `allow_backbone_mismatch`. Errors are `lspt.BundleError`/`WeightsError` with one-line messages.
    """
    from .engine.restore import model_from_bundle

    if isinstance(backbone, PromptedModel):
        backbone = backbone.model.backbone
    model, header = model_from_bundle(Path(bundle), weights=weights, backbone=backbone,
                                      allow_backbone_mismatch=allow_backbone_mismatch)
    wrapped = PromptedModel(model, header.strategy["name"], classes=header.task.get("classes"), task=header.task, header=header)
    return wrapped.to(_resolve(device)).eval()


def load_many(bundles: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike], weights: str | os.PathLike | None = None,
              *, device: str | torch.device = "cpu", allow_backbone_mismatch: bool = False) -> MultiTaskModel:
    """Load several bundles onto ONE backbone (loaded once): a `MultiTaskModel`.

    `bundles`: paths (each task is named after its bundle's task metadata, else the file stem) or a
    {name: path} mapping. All bundles must have been trained on the same backbone (name and
    fingerprint); anything else is a BundleError naming the file.
    """
    items = list(bundles.items()) if isinstance(bundles, Mapping) else [(None, b) for b in bundles]
    if not items:
        raise UsageError("load_many needs at least one bundle")
    shared: FrozenBackbone | None = None
    tasks: dict[str, PromptedModel] = {}
    for name, path in items:
        model = load(path, weights, device=device, backbone=shared, allow_backbone_mismatch=allow_backbone_mismatch)
        shared = shared or model.model.backbone
        name = name or model.task.get("name") or Path(path).stem
        if name in tasks:
            raise UsageError(f"two bundles are named {name!r}: pass {{name: path}} to load_many to name them")
        tasks[name] = model
    return MultiTaskModel(tasks)


def wrap(timm_model: nn.Module, strategy: str = "vpt-deep", num_classes: int | None = None, *, backbone: str | None = None,
         weights: str | os.PathLike | None = None, readout: str | None = None, head_init: str = "normal",
         classes: Sequence[str] | None = None, **options: Any) -> PromptedModel:
    """Turn a timm VisionTransformer into a prompted model to train in your own loop.

    The ViT is frozen (eval mode, requires_grad False) and its own classifier removed
    (`reset_classifier(0)`, in place); `strategy` ("linear", "vpt-shallow", "vpt-deep", "gapt",
    "lspt" or a plugin's) gets `**options` (e.g. num_prompts=10) and a new Linear head with
    `num_classes` outputs (or len(classes)). Only `trainable_parameters()` train.
    `backbone`: the registered lspt backbone name this ViT is (e.g. "mae-vitb", "vit-tiny"), so that
    `lspt eval`/`predict`/`serve` can rebuild it from the saved bundle (its fingerprint is checked
    there); without it the bundle records "timm:<architecture>" and loads only through
    `lspt.load(bundle, backbone=this_model)`. `weights`: the weights file this ViT was loaded from,
    recorded in the bundle. `readout`: "cls", "mean-norm" or "mean-ln" (default: the registered
    backbone's, else "cls" for a token-pooled ViT; an average-pooled ViT with its own `fc_norm` must
    choose one, since none of them applies timm's fc_norm).
    """
    from .plugins import get_host

    for part in ("patch_embed", "blocks", "_pos_embed", "norm_pre", "norm", "num_prefix_tokens"):
        if not hasattr(timm_model, part):
            raise UsageError(f"wrap() needs a timm VisionTransformer; {type(timm_model).__name__} has no '{part}'")
    if classes is not None and num_classes is None:
        num_classes = len(classes)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UsageError(f"wrap() needs num_classes, an integer >= 1; got {num_classes!r}")
    host = get_host()
    spec = None
    if backbone is not None:
        spec = host.backbones.get_buildable(backbone)  # unknown name: a one-line error listing the known ones
        readout = readout or spec.readout
        name = backbone
    else:
        arch = (getattr(timm_model, "pretrained_cfg", None) or {}).get("architecture") or type(timm_model).__name__
        name = f"timm:{arch}"
    if readout is None:
        fc_norm = getattr(timm_model, "fc_norm", None)
        if getattr(timm_model, "global_pool", "token") != "token" and fc_norm is not None and not isinstance(fc_norm, nn.Identity):
            raise UsageError(
                f"this ViT pools with global_pool={timm_model.global_pool!r} through its own fc_norm, which lspt's readouts "
                "do not apply; pass readout='mean-norm' (mean of tokens, then `norm`), 'mean-ln' or 'cls' to choose knowingly"
            )
        readout = "cls" if getattr(timm_model, "global_pool", "token") == "token" else "mean-norm"
    if getattr(timm_model, "num_classes", 0) and hasattr(timm_model, "reset_classifier"):
        timm_model.reset_classifier(0)
    frozen = FrozenBackbone(timm_model, name=name, readout=readout, source="lspt.wrap",
                            weights_file=Path(weights) if weights is not None else None)
    if spec is not None:  # the registered normalisation, as the backbone's factory applies it (timm's may differ)
        for key in ("mean", "std", "interpolation"):
            value = getattr(spec, key, None)
            if value is not None:
                frozen.data_config[key] = list(value) if isinstance(value, tuple) else value
    prompts = build_strategy(strategy, frozen.dims, options, host=host)
    model = PromptedViT(frozen, prompts, num_classes, head_init=head_init, readout=readout)
    device = _device_of(timm_model)
    return PromptedModel(model, strategy, classes=classes).to(device)


# -- helpers ------------------------------------------------------------------------------------
def _check_precision(value: Any) -> str:
    if value not in ("fp32", "bf16"):
        raise UsageError(f"precision must be 'fp32' or 'bf16', got {value!r}")
    return value


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UsageError(f"top_k must be an integer >= 1, got {top_k!r}")
    return top_k


def _resolve(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from .engine.train import resolve_device

    return resolve_device(device)


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _as_list(images: Any) -> list:
    if isinstance(images, (str, os.PathLike, bytes, bytearray)) or _is_pil(images):
        return [images]
    if isinstance(images, torch.Tensor):
        return [images] if images.dim() == 3 else list(images.unbind(0))
    return list(images)


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _preprocess(images: Any, transform, device: torch.device) -> torch.Tensor:
    from .data.images import decode_image, load_image, to_rgb

    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return images.to(device)
    tensors = []
    for i, item in enumerate(_as_list(images)):
        if isinstance(item, torch.Tensor):
            if item.dim() != 3:
                raise UsageError(f"image {i}: a tensor image is [C, H, W] (preprocessed), got shape {tuple(item.shape)}")
            tensors.append(item)
        elif isinstance(item, (bytes, bytearray)):
            tensors.append(transform(decode_image(bytes(item), f"image {i}")))
        elif isinstance(item, (str, os.PathLike)):
            tensors.append(transform(load_image(item)))
        elif _is_pil(item):
            tensors.append(transform(to_rgb(item)))
        else:
            raise UsageError(f"image {i}: expected a path, bytes, a PIL image or a tensor, got {type(item).__name__}")
    if not tensors:
        raise UsageError("predict() needs at least one image")
    return torch.stack(tensors).to(device)

