"""Built-in strategies, registered through the `lspt` entry point `strategies` like any plugin's.

One family per file, each opening with its paper: linear.py (the linear probe), vpt.py (VPT-shallow,
VPT-deep), gapt.py (GaPT), lspt.py (LSPT), spt.py (SPT-shallow, SPT-deep), vfpt.py (VFPT,
VFPT-shallow); parts.py holds the small
pieces the prompt strategies share (option checks, VPT's prompt init and dropout, GaPT's gate and
temperature). No strategy inherits from another.

A strategy is declared next to its class: each file's `STRATEGIES` table lists what it registers
(name, description, defaults, paper, and the class that builds it). Registering must not import
torch (`lspt --help` and shell completion load every plugin) while the strategy files do, so this
hook reads each table from the file's source as data (`ast.literal_eval` of that one assignment,
the way setuptools reads a `__version__` without importing the module); a file is imported only
when one of its strategies is built or counted.

The trainable-parameter count (`lspt list strategies`, the memory check before a strategy is built)
comes from the module, not from a formula: `count_trainable` builds the strategy on the meta device
(no memory, no random numbers drawn) and sums its trainable tensors. It imports torch, so
`lspt list strategies` does; `lspt --help` and registration do not.
"""

from __future__ import annotations

import ast
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

from lspt_cli import hookimpl
from lspt_cli.backbone_dims import BackboneDims
from lspt_cli.errors import PluginError
from lspt_cli.specs import StrategySpec

FAMILIES = ("linear", "vpt", "gapt", "lspt", "spt", "vfpt")  # the files, in `lspt list strategies` order


def read_table(family: str) -> tuple[dict[str, Any], ...]:
    """The `STRATEGIES` table of plugins/strategies/<family>.py, read from its source without running it."""
    path = Path(__file__).with_name(f"{family}.py")
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "STRATEGIES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))  # ValueError names the node that is not plain data
    raise PluginError(f"{path} has no STRATEGIES table")


def count_trainable(factory: str, defaults: dict[str, Any], dims: Any, config: dict[str, Any] | None = None) -> int:
    """The trainable parameters (head excluded) of the strategy `factory(dims, **options)` builds, with
    `defaults` overridden by `config`: the module itself, built on the meta device, counted.

    `dims` is a BackboneDims or anything with some of its fields (the others keep ViT-B/16's).
    """
    import torch

    from lspt_cli.plugins import resolve_factory

    if not isinstance(dims, BackboneDims):
        given = {f.name: int(getattr(dims, f.name)) for f in fields(BackboneDims) if hasattr(dims, f.name)}
        dims = BackboneDims(**given)
    with torch.device("meta"):
        module = resolve_factory(factory)(dims, **{**defaults, **(config or {})})
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def specs_of(family: str) -> list[StrategySpec]:
    """One StrategySpec per entry of the family's table; the factory is the entry's class."""
    specs = []
    for entry in read_table(family):
        factory = f"{__name__}.{family}:{entry['class']}"
        defaults = dict(entry["defaults"])
        specs.append(
            StrategySpec(
                name=entry["name"],
                description=entry["description"],
                factory=factory,
                defaults=defaults,
                count_params=partial(count_trainable, factory, defaults),
                paper=entry["paper"],
            )
        )
    return specs


SPECS = [spec for family in FAMILIES for spec in specs_of(family)]


@hookimpl
def lspt_register_strategies(register):
    for spec in SPECS:
        register(spec)
