"""The conformance checks `lspt plugins check` runs, and plugin authors run from pytest.

`run_check(name)` builds the registered component on the tiny `vit-tiny` and checks what the
core relies on (timm's model tests are the model: forward without NaNs, every trainable tensor
gets a gradient, state_dict round-trips, options reach `config()`), returning a `CheckReport` with
one `CheckResult` per check (ok, fail or skip, a message and a hint). The CLI command and
`lspt_cli.testing` (the authors' kit, which re-exports these) call the same functions. Torch is
imported only when a check runs.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import LsptError, UsageError
from .messages import one_line

STEPS = 5  # optimizer steps in which every trainable tensor must get a non-zero gradient
BATCH = 4
CLASSES = 3


# -- results -------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """One check: `status` is "ok", "fail" or "skip"; `hint` says how to fix a failure."""

    check: str
    status: str
    message: str = ""
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "message": self.message, "hint": self.hint}


@dataclass
class CheckReport:
    """All checks of one component. `assert_ok()` fails a pytest test naming every failed check."""

    name: str
    kind: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.check for r in self.results if not r.ok]

    def result(self, check: str) -> CheckResult:
        return next(r for r in self.results if r.check == check)

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            line = f"{r.status.upper():4}  {self.kind} {self.name}: {r.check}" + (f": {r.message}" if r.message else "")
            if r.status == "fail" and r.hint:
                line += f"  (fix: {r.hint})"
            out.append(line)
        return out

    def assert_ok(self) -> "CheckReport":
        if not self.ok:
            raise AssertionError(f"{self.kind} '{self.name}' failed check(s) {', '.join(self.failed)}:\n" + "\n".join(self.lines()))
        return self

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "ok": self.ok, "failed": self.failed,
                "checks": [r.to_json() for r in self.results]}


class _Checks:
    """Runs named checks in order; a check returns a message (ok), raises _Fail/_Skip, or crashes."""

    def __init__(self, report: CheckReport):
        self.report = report
        self.blocked: str | None = None  # a failed prerequisite: later checks are skipped, naming it

    def run(self, check: str, fn: Callable[[], str | None], hint: str = "", prerequisite: bool = False) -> bool:
        if self.blocked:
            self.report.results.append(CheckResult(check, "skip", f"needs '{self.blocked}' to pass"))
            return False
        try:
            message = fn() or ""
        except _Skip as exc:
            self.report.results.append(CheckResult(check, "skip", str(exc)))
            return False
        except _Fail as exc:
            self.report.results.append(CheckResult(check, "fail", str(exc), exc.hint or hint))
        except LsptError as exc:
            self.report.results.append(CheckResult(check, "fail", exc.message, exc.hint or hint))
        except Exception as exc:  # a plugin bug: name it, never crash the checker
            self.report.results.append(CheckResult(check, "fail", f"{type(exc).__name__}: {exc}", hint))
        else:
            self.report.results.append(CheckResult(check, "ok", message))
            return True
        if prerequisite:
            self.blocked = check
        return False


class _Fail(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class _Skip(Exception):
    pass


# -- entry point ---------------------------------------------------------------------------------
def check_kinds(name: str, host=None) -> list[str]:
    """The kinds of component registered under `name` (a strategy and a dataset may share one)."""
    from .plugins import get_host

    host = host or get_host()
    return [kind for kind in KINDS if name in host.registry(kind)]


KINDS = ("strategy", "backbone", "dataset", "recipe", "logger", "executor")  # every kind a plugin can register


def run_check(name: str, kind: str | None = None, *, host=None, root: str | Path | None = None,
              weights: str | Path | None = None, backbone: str = "vit-tiny",
              options: dict[str, str] | None = None) -> CheckReport:
    """Run every conformance check of the registered component `name` (its kind found if not given).

    Strategies and datasets are exercised on `backbone` (default vit-tiny, random init, no download);
    `root` is the data folder of a dataset that needs one; `weights` a backbone's weights file;
    `options` a logger's or an executor's options (`--log-opt`, `--executor-opt`). Nothing is written
    outside a temporary directory (loggers and executors run with their data dir there).
    """
    from .plugins import get_host

    host = host or get_host()
    kinds = [kind] if kind else check_kinds(name, host)
    if not kinds:
        import difflib

        close = difflib.get_close_matches(name, sorted({n for k in KINDS for n in host.registry(k).names()}), n=3)
        raise UsageError(f"nothing named '{name}' is registered (no {', '.join(KINDS[:-1])} or {KINDS[-1]})",
                         hint=f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see `lspt plugins`")
    kind = kinds[0]
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    host.registry(kind).get(name)  # unknown name for an explicit kind: the usual UsageError
    report = CheckReport(name=name, kind=kind)
    import torch

    threads = torch.get_num_threads()  # an in-process trial sets its own
    try:
        with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory(prefix="lspt-check-") as tmp:
            {"strategy": _strategy_checks, "backbone": _backbone_checks, "dataset": _dataset_checks,
             "recipe": _recipe_checks, "logger": _logger_checks, "executor": _executor_checks,
             }[kind](_Checks(report), name, host, Path(tmp), root=root, weights=weights, backbone=backbone,
                     options=dict(options or {}))
    finally:
        torch.set_num_threads(threads)
    return report


# -- strategies ----------------------------------------------------------------------------------
def _batch(backbone, seed: int = 0):
    import torch

    size = int(backbone.data_config["input_size"][-1])
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(BATCH, backbone.dims.in_chans, size, size, generator=g)
    labels = torch.arange(BATCH) % CLASSES
    return images, labels


def _train_steps(model, images, labels, steps: int, watch=None) -> list[float]:
    """A few SGD steps on one batch, as `lspt tune` takes them (train mode, cross-entropy)."""
    import torch
    import torch.nn.functional as F

    model.train()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if watch is not None:
            watch.observe()
        optimizer.step()
        losses.append(loss.item())
    return losses


RESUME_STEPS = 2  # steps before and after the checkpoint


def _resume_check(model, images, labels) -> str:
    """Train 2 + 2 steps uninterrupted; train 2 steps, checkpoint (trainable state_dict + optimizer),
    rebuild a fresh instance (another init seed, so nothing survives but the checkpoint), load, train
    2 more steps: the tensors and losses must be identical. State kept in a Python attribute (an
    "initialised" flag, a step counter) makes them differ."""
    import copy

    import torch

    def optimizer_of(m):
        return torch.optim.SGD(m.trainable_parameters(), lr=0.1, momentum=0.9)

    def steps(m, optimizer, seed):
        import torch.nn.functional as F

        torch.manual_seed(seed)  # dropout of the continued steps: the same draws in both runs
        m.train()
        losses = []
        for _ in range(RESUME_STEPS):
            loss = F.cross_entropy(m(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    whole = model(seed=0)
    initial = {k: v.detach().clone() for k, v in whole.trainable_state_dict().items()}
    opt = optimizer_of(whole)
    steps(whole, opt, 100)
    after = steps(whole, opt, 200)

    first = model(seed=0)
    first.load_trainable_state_dict(initial)  # the same start (an unseeded init is another check's business)
    opt = optimizer_of(first)
    steps(first, opt, 100)
    tensors = {k: v.detach().clone() for k, v in first.trainable_state_dict().items()}
    optimizer_state = copy.deepcopy(opt.state_dict())
    del first
    resumed = model(seed=1)
    resumed.load_trainable_state_dict(tensors)
    opt = optimizer_of(resumed)
    opt.load_state_dict(optimizer_state)
    again = steps(resumed, opt, 200)
    a, b = whole.trainable_state_dict(), resumed.trainable_state_dict()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    if different or after != again:
        raise _Fail(f"a run resumed from its checkpoint differs from the uninterrupted run after {2 * RESUME_STEPS} "
                    f"steps ({', '.join(different) or 'losses'}): state outside state_dict()")
    return f"{RESUME_STEPS} + {RESUME_STEPS} steps, resumed in a fresh instance: identical tensors"


def _data_init_check(model, frozen, images, labels) -> str:
    """A strategy's data-aware init (`init_from_data`, docs/plugins.md): run as the Trainer runs it
    (engine/data_init.py) on the kit's images, twice with seed 0: it must run once each time, give
    the same tensors, and leave everything in state_dict: a fresh instance loaded with them (a
    resumed run) must not initialise again, neither through the hook nor lazily in a forward."""
    import torch

    from .engine.data_init import run_data_init, wanted_images
    from .engine.distributed import DistContext

    n = wanted_images(model(seed=0).strategy)
    if n == 0:
        return "none (data_init_images = 0)"
    calls: list[int] = []

    def initialised(seed: int):
        m = model(seed=seed)
        original = m.strategy.init_from_data
        m.strategy.init_from_data = lambda *args: (calls.append(1), original(*args))[1]
        batches = lambda order: [(images[torch.tensor(order) % images.shape[0]], None)]  # noqa: E731
        run_data_init(m, batches, images.shape[0], 0, torch.device("cpu"), DistContext())
        return m, {k: v.detach().clone() for k, v in m.trainable_state_dict().items()}

    (first, a), (_, b) = initialised(0), initialised(0)
    if len(calls) != 2:
        raise _Fail(f"init_from_data ran {len(calls)} times in 2 initialisations", "the Trainer calls it once per run")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    if different:
        raise _Fail(f"two data-aware inits with seed 0 differ ({', '.join(different)})",
                    "draw randomness from torch's global RNG (seeded by the run), never from random/numpy or an "
                    "unseeded generator, and read only the images and the backbone")
    resumed = model(seed=1)
    resumed.load_trainable_state_dict(a)
    resumed.strategy.init_from_data = lambda *args: calls.append(1)
    with torch.no_grad():
        resumed.train()
        resumed(images)
        first.eval(), resumed.eval()
        same_logits = torch.equal(first(images), resumed(images))
    moved = [k for k, v in resumed.trainable_state_dict().items() if not torch.equal(v, a[k])]
    if len(calls) != 2 or moved or not same_logits:
        raise _Fail("a resumed run (a fresh instance loaded with the initialised tensors) initialises again "
                    f"({', '.join(moved) or 'its logits differ'})",
                    "do the data-aware init only in init_from_data (never lazily in a forward) and keep its "
                    "result in state_dict (in-place copy_ into parameters or buffers)")
    return f"{n} images: ran once per run, same tensors for a seed, not rerun after a resume"


def _strategy_checks(checks: _Checks, name: str, host, tmp: Path, *, backbone: str, **_) -> None:
    import torch

    from . import bundle
    from .engine.grad_watch import GradWatch
    from .engine.restore import model_from_bundle
    from .prompted import PromptedViT, build_strategy, load_backbone

    spec = host.strategies.get(name)
    frozen = load_backbone(backbone, host=host)
    dims = frozen.dims
    images, labels = _batch(frozen)

    def model(config=None, seed=0):
        torch.manual_seed(seed)
        return PromptedViT(frozen, build_strategy(name, dims, config, host=host), CLASSES)

    def build():
        strategy = build_strategy(name, dims, {}, host=host)
        if not isinstance(strategy.config(), dict):
            raise _Fail("config() does not return a dict", "config() returns the constructor's options (a bundle records them)")
        json.dumps(strategy.config())
        n = sum(p.numel() for p in strategy.parameters() if p.requires_grad)
        return f"{type(strategy).__name__} on {backbone} ({n:,} trainable parameters, defaults {spec.defaults})"

    checks.run("build", build, "the factory is called as factory(dims, **defaults) and returns a "
               "lspt_cli.prompted.PromptStrategy; config() must be JSON (docs/plugins.md)", prerequisite=True)

    def forward():
        m = model()
        for mode in (True, False):
            m.train(mode)
            logits = m(images)
            if tuple(logits.shape) != (BATCH, CLASSES):
                raise _Fail(f"logits have shape {tuple(logits.shape)}, expected {(BATCH, CLASSES)}",
                            "keep the prefix tokens (CLS) where they are: the head reads x[:, :prefix]")
            if not torch.isfinite(logits).all():
                raise _Fail("non-finite logits", "check the strategy's initialisation")
        return "train and eval mode, finite logits"

    checks.run("forward", forward, "start(x) returns a dict; before_block/after_block return tokens [B, T, D]",
               prerequisite=True)

    def gradients():
        m = model()
        watch = GradWatch(m)
        _train_steps(m, images, labels, STEPS, watch)
        dead = watch.dead()
        if dead:
            raise _Fail(
                f"no non-zero gradient in {STEPS} steps: {', '.join(dead)}",
                "every nn.Parameter must reach the tokens: use it in before_block/after_block (start only returns "
                "state), or freeze it with requires_grad_(False)",
            )
        return f"all {len(watch.params)} trainable tensors got a non-zero gradient within {STEPS} steps"

    checks.run("gradients", gradients)

    def count_params():
        if spec.count_params is None:
            raise _Skip("StrategySpec.count_params is not set (`lspt list strategies` shows no size)")
        strategy = build_strategy(name, dims, {}, host=host)
        actual = sum(p.numel() for p in strategy.parameters() if p.requires_grad)
        claimed = spec.count_params(dims, spec.options({}))
        if claimed != actual:
            raise _Fail(f"count_params says {claimed:,}, the strategy has {actual:,} trainable parameters",
                        "count_params(dims, config) must sum the numel of every trainable tensor (head excluded)")
        return f"{actual:,}"

    checks.run("count_params", count_params)

    def round_trip():
        m = model()
        lost = [k for k in spec.defaults if k not in m.strategy.config()]
        if lost:
            raise _Fail(f"config() lacks option(s) {', '.join(lost)}: a bundle trained with --set {lost[0]}=... "
                        "would be rebuilt with the default", "pass every option to super().__init__(dims, **options)")
        _train_steps(m, images, labels, 2)
        meta = bundle.make_metadata(
            backbone={"name": backbone, "fingerprint": frozen.fingerprint, "source": frozen.source, "weights": None},
            strategy={"name": name, "config": m.strategy.config()},
            task={"name": "check", "classes": [f"c{i}" for i in range(CLASSES)], "benchmark": "custom"},
            data_config=dict(frozen.data_config),
        )
        path = tmp / "check.safetensors"
        bundle.save(path, m.trainable_state_dict(), meta)
        restored, _ = model_from_bundle(path, backbone=frozen, host=host)
        m.eval()
        with torch.no_grad():
            if not torch.equal(m(images), restored(images)):
                raise _Fail("the restored model's logits differ from the trained model's",
                            "keep all learned state in nn.Parameters/buffers, and make config() return every option")
        return f"{len(m.trainable_state_dict())} tensors, identical logits"

    checks.run("bundle round-trip", round_trip,
               "config() must return every constructor option, and state_dict() hold every learned tensor")

    def resume():
        return _resume_check(model, images, labels)

    checks.run("resume", resume, "keep every piece of state that changes training in nn.Parameters or buffers "
               "(state_dict), never in Python attributes: a resumed run rebuilds the strategy and loads state_dict")

    def bad_option():
        problems = []
        try:
            build_strategy(name, dims, {"no_such_option": 1}, host=host)
        except LsptError:
            pass
        else:
            problems.append("an unknown option was accepted (list every option in StrategySpec.defaults)")
        tried = []
        for key, default in spec.defaults.items():
            if not isinstance(default, (bool, int, float)):
                continue  # strings, lists, None: their valid values are the strategy's business
            tried.append(key)
            try:
                m = PromptedViT(frozen, build_strategy(name, dims, {key: "abc"}, host=host), CLASSES)
                m(images)
            except LsptError:
                continue
            except Exception as exc:
                problems.append(f"--set {key}=abc raised {type(exc).__name__} ({one_line(str(exc))[:200]}): a traceback for users")
                continue
            problems.append(f"--set {key}=abc was accepted without an error")
        if problems:  # every bad option at once, not the first
            raise _Fail(f"{len(problems)} problem(s): " + "; ".join(problems),
                        "check each option's type in the constructor and raise lspt_cli.ConfigError")
        return "unknown option and " + (f"non-{'/'.join(sorted({type(spec.defaults[k]).__name__ for k in tried}))} "
                                        f"value of {', '.join(tried)}" if tried else "no typed options") + ": clean errors"

    checks.run("bad option", bad_option)

    def seeded():
        runs = []
        for _ in range(2):
            m = model(seed=0)
            losses = _train_steps(m, images, labels, 2)
            runs.append((losses, {k: v.clone() for k, v in m.trainable_state_dict().items()}))
        (l1, s1), (l2, s2) = runs
        different = [k for k in s1 if not torch.equal(s1[k], s2[k])]
        if l1 != l2 or different:
            raise _Fail(f"two runs with seed 0 differ ({', '.join(different) or 'losses'})",
                        "draw randomness from torch's global RNG (torch.rand, nn.init, dropout), never from "
                        "random/numpy or a private unseeded generator")
        return "identical tensors after 2 steps"

    checks.run("same seed, same result", seeded)
    checks.run("data-aware init", lambda: _data_init_check(model, frozen, images, labels),
               "init_from_data: deterministic for a seed, its result in state_dict, never rerun on resume")
    gradients_failed = any(r.check == "gradients" and r.status == "fail" for r in checks.report.results)
    checks.run("DINOv2-shaped backbone", lambda: _dinov2_shaped_check(name, host, gradients=not gradients_failed),
               "use self.prefix (dims.num_prefix_tokens: CLS + registers) for where prompts go, never 1, and size "
               "parameters from dims (embed_dim, depth, num_heads, patch_size), never ViT-B's numbers")


# A tiny model shaped like DINOv2 with registers (timm's vit_small_patch14_reg4_dinov2 at width 64, depth 4):
# 4 register tokens (5 prefix tokens), LayerScale, 14-px patches on 42-px images (a 3 x 3 grid), no
# position embedding on the prefix (no_embed_class), as timm builds DINOv2 with registers.
DINOV2_SHAPED = dict(img_size=42, patch_size=14, embed_dim=64, depth=4, num_heads=4, init_values=1e-5,
                     reg_tokens=4, no_embed_class=True)


def dinov2_shaped_backbone():
    """The DINOv2-shaped backbone above, random init with a fixed seed, frozen."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from .backbone import FrozenBackbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionTransformer(**DINOV2_SHAPED, num_classes=0)
    return FrozenBackbone(model, "dinov2-shaped (tiny)", "cls+mean", source="random init (seed 0)")


def _dinov2_shaped_check(name: str, host, gradients: bool = True) -> str:
    """Every strategy on registers, LayerScale and patch 14: forward and backward with every trainable
    tensor reached, the prefix tokens (CLS + registers) left where they are with the prompts after
    them, and the cls+mean readout (twice the width) on top. `gradients` False: a dead tensor was
    already reported by the "gradients" check on vit-tiny, so it is not reported twice."""
    import torch

    from .engine.data_init import run_data_init, wanted_images
    from .engine.distributed import DistContext
    from .engine.grad_watch import GradWatch
    from .prompted import PromptedViT, build_strategy

    frozen = dinov2_shaped_backbone()
    dims = frozen.dims
    images, labels = _batch(frozen, seed=1)
    torch.manual_seed(0)
    strategy = build_strategy(name, dims, {}, host=host)
    m = PromptedViT(frozen, strategy, CLASSES, readout="cls+mean")
    if wanted_images(strategy):  # as the Trainer runs it (engine/data_init.py), on the kit's images
        batches = lambda order: [(images[torch.tensor(order) % images.shape[0]], None)]  # noqa: E731
        run_data_init(m, batches, images.shape[0], 0, torch.device("cpu"), DistContext())
    embedded = frozen.embed(images)
    seen: dict[str, torch.Tensor] = {}
    original = strategy.before_block

    def spy(index, x, state):
        out = original(index, x, state)
        if index == 0:
            seen["x"] = out.detach()
        return out

    strategy.before_block = spy
    try:
        m.train()
        logits = m(images)
    finally:
        del strategy.before_block
    if tuple(logits.shape) != (BATCH, CLASSES) or not torch.isfinite(logits).all():
        raise _Fail(f"logits of shape {tuple(logits.shape)} (finite: {bool(torch.isfinite(logits).all())}) "
                    f"on a model with {dims.num_prefix_tokens} prefix tokens")
    x0, prefix = seen["x"], dims.num_prefix_tokens
    if not torch.equal(x0[:, :prefix], embedded[:, :prefix].detach()):
        raise _Fail(f"the first block's input does not start with the {prefix} prefix tokens (CLS + "
                    f"{prefix - 1} registers): prompts went before a register")
    watch = GradWatch(m)
    _train_steps(m, images, labels, STEPS, watch)
    dead = watch.dead() if gradients else []
    if dead:
        raise _Fail(f"no non-zero gradient in {STEPS} steps on the DINOv2-shaped model: {', '.join(dead)}")
    prompts = x0.shape[1] - prefix - dims.num_patches
    return (f"{prefix} prefix tokens (CLS + {prefix - 1} registers), LayerScale, patch {dims.patch_size}: "
            f"{prompts} prompt slot(s) after the prefix, cls+mean head of width {m.head.in_features}, "
            + (f"every trainable tensor reached within {STEPS} steps" if gradients else "gradients: see 'gradients'"))


# -- backbones -----------------------------------------------------------------------------------
def _backbone_checks(checks: _Checks, name: str, host, tmp: Path, *, weights=None, **_) -> None:
    import torch

    from .prompted import PromptedViT, build_strategy, load_backbone

    spec = host.backbones.get(name)
    loaded: dict[str, Any] = {}
    member = not host.backbones.registered(name)  # timm/<model>: the family's spec, not the model's numbers

    def build():
        if host.backbones.is_family(name):
            raise _Fail(f"'{name}' is a family: check one of its models",
                        f"lspt plugins check {name[:-1]}vit_small_patch14_dinov2 --weights FILE")
        loaded["b"] = load_backbone(name, weights, host=host)
        return f"{loaded['b'].source}"

    checks.run("build", build, "factory(weights) returns a lspt_cli.backbone.FrozenBackbone; a backbone that "
               "needs a file is checked with --weights FILE", prerequisite=True)

    def dims():
        d = loaded["b"].dims
        if member:
            return (f"a member of family '{name.partition('/')[0]}/*': embed_dim {d.embed_dim}, depth {d.depth}, "
                    f"prefix {d.num_prefix_tokens}, {d.num_patches} patches, readout {loaded['b'].readout} (from the model)")
        wrong = [f"{k}: spec {getattr(spec, k)}, model {getattr(d, k)}" for k in ("embed_dim", "depth", "num_prefix_tokens")
                 if getattr(spec, k) != getattr(d, k)]
        if wrong:
            raise _Fail("BackboneSpec disagrees with the model: " + "; ".join(wrong),
                        "`lspt list` and count_params use the spec's embed_dim/depth/num_prefix_tokens: make them match")
        if spec.readout != loaded["b"].readout:
            raise _Fail(f"readout: spec {spec.readout!r}, model {loaded['b'].readout!r}", "pass the same readout to both")
        return f"embed_dim {d.embed_dim}, depth {d.depth}, prefix {d.num_prefix_tokens}, {d.num_patches} patches"

    checks.run("dims", dims)

    def frozen():
        b = loaded["b"]
        trainable = [n for n, p in b.named_parameters() if p.requires_grad]
        training = [n for n, m in b.named_modules() if m.training and n]  # FrozenBackbone itself is a wrapper
        if trainable or training:
            raise _Fail(f"{len(trainable)} trainable backbone tensor(s), {len(training)} module(s) in train mode",
                        "wrap the model in FrozenBackbone, which freezes it and keeps it in eval mode")
        return "no trainable tensor, eval mode"

    checks.run("frozen", frozen)

    def data_config():
        dc = loaded["b"].data_config
        missing = [k for k in ("input_size", "mean", "std") if k not in dc]
        if missing:
            raise _Fail(f"data_config lacks {', '.join(missing)}", "pass data_config=timm.data.resolve_data_config(...)")
        return f"input {tuple(dc['input_size'])}"

    checks.run("data config", data_config, prerequisite=True)

    def forward_backward():
        b = loaded["b"]
        images, labels = _batch(b)
        torch.manual_seed(0)
        m = PromptedViT(b, build_strategy("vpt-deep", b.dims, {"num_prompts": 2}, host=host), CLASSES)
        m.train()
        logits = m(images)
        if tuple(logits.shape) != (BATCH, CLASSES) or not torch.isfinite(logits).all():
            raise _Fail(f"logits of shape {tuple(logits.shape)}, finite: {bool(torch.isfinite(logits).all())}")
        torch.nn.functional.cross_entropy(logits, labels).backward()
        dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.ne(0).any())]
        if dead:
            raise _Fail(f"no gradient reaches {', '.join(dead)} through the backbone",
                        "embed/blocks/read_out must stay differentiable (no torch.no_grad, no detach)")
        return "vpt-deep prompts and head get gradients through the frozen blocks"

    checks.run("forward and backward", forward_backward)

    def deterministic():
        again = load_backbone(name, weights, host=host)
        if again.fingerprint != loaded["b"].fingerprint:
            raise _Fail("two loads give different fingerprints", "random init must use a fixed seed "
                        "(torch.random.fork_rng + manual_seed), so bundles can check the backbone")
        return f"fingerprint {loaded['b'].fingerprint}"

    checks.run("same weights, same fingerprint", deterministic)


# -- datasets ------------------------------------------------------------------------------------
def _dataset_checks(checks: _Checks, name: str, host, tmp: Path, *, root=None, backbone: str, **_) -> None:
    import torch

    from .data.loader import build_loader
    from .data.manifest import Manifest
    from .prompted import PromptedViT, build_strategy, load_backbone
    from .plugins import resolve_factory

    spec = host.datasets.get(name)
    made: dict[str, Any] = {}

    def prepare(out: Path):
        out.mkdir(parents=True, exist_ok=True)
        manifest = resolve_factory(spec.prepare)(Path(root) if (spec.needs_root and root) else None, out)
        if not isinstance(manifest, Manifest):
            raise _Fail(f"prepare returned {type(manifest).__name__}, not a lspt_cli.data.manifest.Manifest")
        manifest.directory = out
        return manifest

    def build():
        if spec.needs_root and root is None:
            raise _Fail("this dataset needs its files", "run the check with --root DIR (the unpacked dataset)")
        made["m"] = prepare(tmp / "a")
        made["m"].validate()
        return f"{len(made['m'].classes)} classes, " + ", ".join(f"{s} {len(v)}" for s, v in made["m"].splits.items())

    checks.run("prepare", build, "prepare(root, out_dir, **options) returns a valid Manifest", prerequisite=True)

    def splits():
        m = made["m"]
        empty = [s for s in ("train", "val", "test", "trainval") if not m.splits.get(s)]
        if empty:
            raise _Fail(f"empty split(s): {', '.join(empty)}", "tune needs train, val and test (and trainval for --final)")
        if m.benchmark != spec.benchmark:
            raise _Fail(f"manifest benchmark {m.benchmark!r}, DatasetSpec says {spec.benchmark!r}", "make them agree")
        return "train, val, test and trainval are non-empty"

    checks.run("splits", splits)

    def loads_and_trains():
        m = made["m"]
        frozen = load_backbone(backbone, host=host)
        dc = frozen.data_config
        loader = build_loader(m, "train", input_size=int(dc["input_size"][-1]), mean=dc["mean"], std=dc["std"],
                              train=True, batch_size=BATCH, use_cache=False)
        images, labels = next(iter(loader))
        if not torch.isfinite(images).all() or int(labels.max()) >= len(m.classes) or int(labels.min()) < 0:
            raise _Fail("a batch has non-finite pixels or out-of-range labels")
        torch.manual_seed(0)
        model = PromptedViT(frozen, build_strategy("linear", frozen.dims, {}, host=host), len(m.classes))
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        return f"a batch of {tuple(images.shape)} trains on {backbone}"

    checks.run("load and train", loads_and_trains, "every image key must open under manifest.root")

    def deterministic():
        again = prepare(tmp / "b")
        first = made["m"]
        if again.splits != first.splits or again.classes != first.classes:
            raise _Fail("two prepares give different splits", "seed any shuffling (random.Random(0)) so splits are reproducible")
        return "identical splits"

    checks.run("same files, same splits", deterministic)


# -- recipes -------------------------------------------------------------------------------------
def _recipe_checks(checks: _Checks, name: str, host, tmp: Path, **_) -> None:
    from .recipes import recipe_layers
    from .settings import TrainConfig

    spec = host.recipes.get(name)

    def values():
        train, _ = recipe_layers(spec.values, spec.task if spec.task != "*" else "any")
        TrainConfig(**train).validate(f"recipe '{name}'")
        return ", ".join(f"{k}={v}" for k, v in sorted(train.items())) or "no train values"

    checks.run("train values", values, "keys and types of [train] are TrainConfig's (lspt tune --help)")

    def names():
        missing = [f"{kind} '{value}'" for kind, value in (("strategy", spec.strategy), ("backbone", spec.backbone))
                   if not any(c in value for c in "*?[") and value not in host.registry(kind)]
        if missing:
            raise _Fail(f"matches unregistered {', '.join(missing)}", "fix the [match] names (lspt list strategies/backbones)")
        return f"strategy {spec.strategy}, backbone {spec.backbone}, benchmark {spec.benchmark}"

    checks.run("match names", names)

    def strategy_options():
        _, options = recipe_layers(spec.values, spec.task if spec.task != "*" else "any")
        if any(c in spec.strategy for c in "*?[") or spec.strategy not in host.strategies:
            if options:
                raise _Fail("[strategy] options without one named strategy to check them against")
            raise _Skip("no [strategy] options")
        from .prompted import build_strategy
        from .backbone_dims import VIT_B16

        build_strategy(spec.strategy, VIT_B16, options, host=host)
        return f"{options or 'defaults'} build on ViT-B/16 shapes"

    checks.run("strategy options", strategy_options, "every [strategy] key is an option of the strategy")


# -- loggers and executors: a real tiny run, in a scratch data dir ---------------------------------
@contextmanager
def _scratch_data_dir(tmp: Path):
    """The data dir (tasks, mlruns, ...) in `tmp` for the block, for this process and its children."""
    import os

    from . import paths

    saved_flag = paths._flag_overrides.get("data")
    saved_env = os.environ.get("LSPT_DATA_DIR")
    data = tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths.set_override("data", data)
    os.environ["LSPT_DATA_DIR"] = str(data)
    try:
        yield data
    finally:
        paths.set_override("data", saved_flag)
        if saved_env is None:
            os.environ.pop("LSPT_DATA_DIR", None)
        else:
            os.environ["LSPT_DATA_DIR"] = saved_env


TINY_RUN = {"epochs": 2, "warmup_epochs": 0, "batch_size": 64, "threads": 1, "num_workers": 0, "device": "cpu"}


def _tiny_run(run_dir: Path, host, **train) -> dict:
    """`lspt tune --backbone vit-tiny --task digits --strategy linear --epochs 2` in this process (~1 s
    of training): the config, metrics and summary a logger or an executor meets in a real run."""
    from .data.manifest import task_benchmark
    from .engine.train import Trainer
    from .recipes import resolve_config

    config = resolve_config(backbone="vit-tiny", strategy="linear", task="digits", benchmark=task_benchmark("digits", host),
                            registered_recipes=host.recipes, train_overrides={**TINY_RUN, **train})
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(config, run_dir, host=host).run(resume=False)


def _logger_checks(checks: _Checks, name: str, host, tmp: Path, *, options: dict, **_) -> None:
    import dataclasses
    from types import SimpleNamespace

    from .loggers import LOGGER_METHODS, RunLoggers, interface_problem, logger_options, signature_text
    from .plugins import check_requirements, resolve_factory
    from .schema import metrics_records

    spec = host.loggers.get(name)
    made: dict[str, Any] = {}
    interface = ", ".join(signature_text(m) for m in LOGGER_METHODS)

    def build():
        try:
            check_requirements(spec, f"logger '{name}'")
        except LsptError as exc:
            raise _Skip(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None
        made["options"] = logger_options(",".join(f"{name}.{k}={v}" for k, v in options.items()), [spec])[name]
        logger = resolve_factory(spec.factory)(**made["options"])
        problem = interface_problem(logger)
        if problem:
            raise _Fail(problem, f"a logger has {interface} (docs/plugins.md, Loggers)")
        return f"{type(logger).__name__}: " + ", ".join(m for m in LOGGER_METHODS if hasattr(logger, m))

    checks.run("interface", build, f"factory(**options) returns an object with {interface}", prerequisite=True)

    def calls():
        with _scratch_data_dir(tmp):
            run_dir = tmp / "run"
            summary = _tiny_run(run_dir, host)
            config = json.loads((run_dir / "config.json").read_text())
            records = metrics_records(run_dir / "metrics.jsonl")
            seen: list[tuple] = []

            def recording_factory(**kw):
                real = resolve_factory(spec.factory)(**kw)

                class Recorder:
                    def start(self, run, config, state):
                        seen.append(("start", json.dumps(state, sort_keys=True)))
                        return real.start(run, config, state)

                    def log_epoch(self, epoch, metrics):
                        seen.append(("log_epoch", epoch))
                        return real.log_epoch(epoch, metrics)

                    def finish(self, summary, bundle):
                        seen.append(("finish",))
                        return real.finish(summary, bundle)

                    def close(self):
                        seen.append(("close",))
                        if hasattr(real, "close"):
                            real.close()

                return Recorder()

            recorded = dataclasses.replace(spec, factory=recording_factory)
            warnings: list[str] = []
            run = SimpleNamespace(dir=run_dir, name=run_dir.name, config=config)
            first = RunLoggers(run, [recorded], resume=False, warn=warnings.append, options={name: made["options"]})
            first.start(config)
            first.log_epoch(records[0])
            first.close()  # interrupted after epoch 1 (its metrics line 2 written, not yet logged)
            kept = json.dumps(first.state.get(name, {}).get("state", {}), sort_keys=True)
            second = RunLoggers(run, [recorded], resume=True, warn=warnings.append, options={name: made["options"]})
            second.start(config)  # logs epoch 2 from metrics.jsonl
            second.log_epoch(records[1])  # the trainer's own call for an epoch already logged: skipped
            second.finish(summary)
        if warnings:
            raise _Fail(warnings[0].removeprefix("Warning: "), "every method must take the documented arguments and "
                        "not raise on a tiny run; start's state must be JSON (it is kept in loggers.json)")
        expected = [("start", "{}"), ("log_epoch", 1), ("close",), ("start", kept), ("log_epoch", 2), ("finish",)]
        if seen != expected:
            raise _Fail(f"calls {seen}, expected {expected}")
        return "start, epoch 1, close, start (resumed with its own state), epoch 2, finish: no epoch twice"

    checks.run("calls in order, resume", calls,
               "start returns a dict (or None) that lets a resumed run continue; docs/plugins.md, Loggers")


def _executor_checks(checks: _Checks, name: str, host, tmp: Path, *, options: dict, **_) -> None:
    import torch

    from .sweep import LocalExecutor, SweepSpec, build_grid_trials, check_executor, open_executor

    made: dict[str, Any] = {}

    def build():
        try:
            check_executor(name, options, host)
        except LsptError as exc:
            if "needs the Python package" in exc.message:
                raise _Skip(f"{exc.message} ({exc.hint})") from None
            raise
        executor = open_executor(name, options, workers=2, sweep_dir=tmp / "checked", host=host)
        missing = [m for m in ("run", "close") if not callable(getattr(executor, m, None))]
        if missing:
            raise _Fail(f"the executor has no {', '.join(m + '()' for m in missing)}")
        made["executor"] = executor
        return f"{type(executor).__name__} with {options or 'no options'}, 2 workers"

    checks.run("build", build, "factory(options, *, workers, sweep_dir, host) returns an object with run(trials) "
               "and close() (docs/plugins.md, Executors)", prerequisite=True)

    def sweep(directory: Path, executor) -> dict[str, tuple]:
        spec = SweepSpec(backbone="vit-tiny", strategy="linear", tasks=["digits"], seeds=[42], sweep_dir=directory,
                         grid={"lr": [0.01, 0.05]}, train_overrides={**TINY_RUN, "epochs": 1})
        trials = build_grid_trials(spec, host)["digits"]
        results: dict[str, tuple] = {}
        for item in executor.run(list(trials)):
            trial, outcome, summary, error = item
            if trial.name in results:
                raise _Fail(f"trial {trial.name} was reported twice")
            results[trial.name] = (outcome, summary, error, trial.run_dir)
        missing = [t.name for t in trials if t.name not in results]
        if missing:
            raise _Fail(f"run(trials) never reported {', '.join(missing)}")
        return results

    def same_as_local():
        from safetensors.torch import load_file

        with _scratch_data_dir(tmp):
            reference = sweep(tmp / "reference", LocalExecutor({}, workers=1, sweep_dir=tmp / "reference", host=host))
            executor = made["executor"]
            try:
                got = sweep(tmp / "checked", executor)
            finally:
                executor.close()
        problems = []
        for trial, (outcome, summary, error, run_dir) in sorted(got.items()):
            if outcome != "ran" or summary is None:
                problems.append(f"{trial}: {outcome} ({one_line(str(error))[:300]})")
                continue
            ref = load_file(str(reference[trial][3] / "bundle.safetensors"))
            mine = load_file(str(Path(run_dir) / "bundle.safetensors"))
            if sorted(ref) != sorted(mine) or not all(torch.equal(ref[k], mine[k]) for k in ref):
                problems.append(f"{trial}: its bundle differs from the local executor's")
            elif summary.get("val_top1") != reference[trial][1].get("val_top1"):
                problems.append(f"{trial}: val top-1 {summary.get('val_top1')} vs local {reference[trial][1].get('val_top1')}")
        if problems:
            raise _Fail("; ".join(problems), "run each trial with lspt_cli.sweep.run_trial(payload(trial)) on the "
                        "worker and yield (trial, outcome, summary, error) once per trial")
        return f"2 trials (vit-tiny, digits, 1 epoch): outcomes {sorted(v[0] for v in got.values())}, bundles identical to local"

    checks.run("two-trial sweep equals local", same_as_local)
