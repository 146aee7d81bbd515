"""lspt's Python API: load prompt bundles as ready models, or prompt-tune your own timm ViT.

    import lspt
    model = lspt.load("task.safetensors")            # frozen backbone + prompts + head, eval mode
    model.predict(["photo.jpg"], top_k=3)            # [[{"label", "index", "probability"}, ...]]
    many = lspt.load_many(["a.safetensors", "b.safetensors"])   # one backbone, several tasks
    net = lspt.wrap(timm_vit, strategy="vpt-deep", num_classes=10)   # train in your own loop
    net.save("mine.safetensors", classes=[...])      # a bundle for `lspt eval` / `lspt serve`

Stable names: everything in `__all__` (docs/python-api.md). The implementation lives in
`lspt_cli.api`; the command line is `lspt` (lspt_cli.cli).
"""

from lspt_cli import BundleError, LsptError, UsageError, WeightsError, __version__
from lspt_cli.api import MultiTaskModel, PromptedModel, load, load_many, wrap

__all__ = [
    "load", "load_many", "wrap", "PromptedModel", "MultiTaskModel",
    "LsptError", "BundleError", "WeightsError", "UsageError", "__version__",
]
