"""The plugin manager: loads entry points defensively and owns the component registries.

Built-in plugins (distribution "lspt") and third-party ones load through the same entry-point
group "lspt". Each entry point loads in its own try/except; a broken plugin becomes a warning on
stderr and a row in `lspt plugins`, unless `LSPT_STRICT_PLUGINS=1`. `LSPT_LOAD_PLUGINS=a,b`
(empty = none) selects which external plugins (by entry-point or distribution name) load.

Isolation (docs/guarantees.md): plugin code runs under guards that also catch `SystemExit`
(a plugin's `sys.exit()` is a plugin failure, never the end of the CLI; Ctrl-C still stops lspt),
with stdout routed to stderr (a `print` in a plugin cannot corrupt `--json`). A command named like a
built-in (or an earlier plugin's) is refused with a warning. Specs are checked when registered (a
malformed one skips the plugin). An event hook (`lspt_on_epoch_end`, ...) that raises or exits
prints one warning naming the plugin and its hooks are switched off for the rest of the process:
the run goes on and writes its files as usual (`LSPT_STRICT_PLUGINS=1` stops it instead).
Exceptions that escape plugin code elsewhere are named after the plugin by the CLI's error boundary
(`plugin_of_traceback`).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import os
import sys
import time
from types import ModuleType, TracebackType
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, Iterable, TypeVar

import pluggy

from . import hookspecs
from .errors import PluginError, UsageError
from .messages import one_line, shorten_list
from .specs import KIND_OF_SPEC, Factory, BackboneSpec, DatasetSpec, ExecutorSpec, LoggerSpec, RecipeSpec, StrategySpec

BUILTIN_DIST = "lspt"
ENTRY_POINT_GROUP = "lspt"

S = TypeVar("S")


@dataclass
class PluginRecord:
    """One loaded (or failed) plugin, as `lspt plugins` shows it."""

    name: str
    dist: str = ""
    version: str = ""
    builtin: bool = False
    error: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)
    module: str = ""  # the plugin's package (entry points) or module; code under it is the plugin's
    dropped: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> name -> why (a name clash)
    load_seconds: float | None = None  # import + registration, for entry points (`lspt plugins`)

    @property
    def label(self) -> str:
        return f"'{self.name}'" + (f" ({self.dist} {self.version})" if self.dist else "")

    @property
    def described(self) -> str:
        """"built-in 'strategies'" or "plugin 'acme:x' (acme 1.0)": how messages name it."""
        return f"built-in '{self.name}'" if self.builtin else f"plugin {self.label}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.dist,
            "version": self.version,
            "builtin": self.builtin,
            "error": self.error,
            "components": self.components,
            "dropped": self.dropped,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
        }


class Registry(Generic[S]):
    """Name -> spec for one kind of component, remembering which plugin provided each."""

    def __init__(self, kind: str, spec_type: type):
        self.kind = kind
        self.spec_type = spec_type
        self._specs: dict[str, S] = {}
        self._provider: dict[str, str] = {}
        self.host: "PluginHost | None" = None  # for "unknown X" errors that name a plugin that failed

    def add(self, spec: S, plugin: str) -> None:
        if not isinstance(spec, self.spec_type):
            raise PluginError(
                f"plugin '{plugin}' registered a {type(spec).__name__} as a {self.kind}; "
                f"expected lspt_cli.specs.{self.spec_type.__name__}"
            )
        name = getattr(spec, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered a {self.kind} without a name")
        problem = spec_problem(spec)
        if problem:
            raise PluginError(f"plugin '{plugin}' registered {self.kind} '{name}' with {problem}")
        if name in self._specs:
            raise PluginError(
                f"{self.kind} '{name}' is registered twice: by plugin '{self._provider[name]}' "
                f"and by plugin '{plugin}'"
            )
        self._specs[name] = spec
        self._provider[name] = plugin

    def remove_provider(self, plugin: str) -> None:
        for name in [n for n, p in self._provider.items() if p == plugin]:
            del self._specs[name], self._provider[name]

    def get(self, name: str) -> S:
        try:
            return self._specs[name]
        except KeyError:
            pass
        member = self._family_member(name)
        if member is not None:
            return member
        available = sorted(self._specs)
        records = list(self.host.records.values()) if self.host is not None else []
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else None
        failed = [r for r in records if r.error]
        if failed:  # it may have come from a plugin that did not load
            failed_text = "; ".join(f"{r.described} failed: {one_line(r.error)[:200]}" for r in failed[:3])
            hint = (f"{hint} " if hint else "") + f"({failed_text}; see `lspt plugins`)"
        raise UsageError(f"unknown {self.kind} '{name}'; available: {shorten_list(available, 30)}", hint=hint)

    def provider(self, name: str) -> str:
        family = self._family_of(name)
        return self._provider[family.name if family is not None and name not in self._specs else name]

    # -- families: one spec named "prefix/*" stands for every "prefix/<member>" -----------------
    def _family_of(self, name: str) -> S | None:
        """The family spec ("timm/*") whose prefix `name` ("timm/vit_small_patch14_dinov2") carries."""
        prefix, slash, member = name.partition("/")
        if not slash or not member or member == "*" or name in self._specs:
            return None
        return self._specs.get(f"{prefix}/*")

    def _family_member(self, name: str) -> S | None:
        """A spec for one member of a family: the family's, renamed, its factory told which member.

        Only backbones have families (`--backbone timm/<model>`, docs/backbones.md); an exactly
        registered name always wins over a family."""
        family = self._family_of(name)
        if family is None or not isinstance(family, BackboneSpec):
            return None
        import dataclasses

        member = name.partition("/")[2]
        return dataclasses.replace(family, name=name, factory=FamilyFactory(family.factory, member))

    def is_family(self, name: str) -> bool:
        """True for a family pattern itself ("timm/*"): it names no model to build."""
        return name.endswith("/*") and name in self._specs

    def get_buildable(self, name: str) -> S:
        """`get`, refusing a family pattern itself (`--backbone 'timm/*'`): a run needs one member."""
        spec = self.get(name)
        if self.is_family(name):
            raise UsageError(f"{self.kind} '{name}' is a family, not one model: name a member, "
                             f"{name[:-1]}<model>", hint="e.g. timm/vit_small_patch14_dinov2 (docs/backbones.md)")
        return spec

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._specs)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._specs or (isinstance(name, str) and self._family_member(name) is not None)

    def registered(self, name: str) -> bool:
        """Registered under exactly this name (a family's members are not)."""
        return name in self._specs

    def __iter__(self):
        return iter(self._specs[n] for n in sorted(self._specs))

    def __len__(self) -> int:
        return len(self._specs)


@dataclass(frozen=True)
class FamilyFactory:
    """The factory of one family member: the family's factory, called with `model=<member>`.

    `timm/*`'s factory is `load_timm_family(weights, *, model, **options)`; `timm/vit_x` resolves to
    a spec whose factory is `FamilyFactory(that, "vit_x")`, so every caller builds it as any
    other backbone: `factory(weights, **options)`."""

    factory: Factory
    member: str

    def __call__(self, weights=None, **options):
        return resolve_factory(self.factory)(weights, model=self.member, **options)


_REGISTER_HOOKS = {
    "backbone": "lspt_register_backbones",
    "strategy": "lspt_register_strategies",
    "dataset": "lspt_register_datasets",
    "recipe": "lspt_register_recipes",
    "logger": "lspt_register_loggers",
    "executor": "lspt_register_executors",
}


class PluginHost:
    """A pluggy PluginManager plus the registries it fills."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("lspt")
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.backbones: Registry[BackboneSpec] = Registry("backbone", BackboneSpec)
        self.strategies: Registry[StrategySpec] = Registry("strategy", StrategySpec)
        self.datasets: Registry[DatasetSpec] = Registry("dataset", DatasetSpec)
        self.recipes: Registry[RecipeSpec] = Registry("recipe", RecipeSpec)
        self.loggers: Registry[LoggerSpec] = Registry("logger", LoggerSpec)
        self.executors: Registry[ExecutorSpec] = Registry("executor", ExecutorSpec)
        self.warnings: list[str] = []
        self.muted: set[str] = set()  # plugins whose event hooks failed once
        for kind in _REGISTER_HOOKS:
            self.registry(kind).host = self

    # -- loading ---------------------------------------------------------------------------
    def registry(self, kind: str) -> Registry:
        return {
            "backbone": self.backbones,
            "strategy": self.strategies,
            "dataset": self.datasets,
            "recipe": self.recipes,
            "logger": self.loggers,
            "executor": self.executors,
        }[kind]

    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Load every entry point of group "lspt", each in its own try/except."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        selected = _selected_external_plugins()
        # built-ins first: on a name clash, the built-in keeps its name and the plugin's component is dropped
        entry_points = sorted(entry_points, key=lambda e: (not (e.dist and e.dist.name == BUILTIN_DIST),
                                                           e.dist.name if e.dist else "", e.name))
        if selected:
            self._warn_unmatched(selected, entry_points)
        for ep in entry_points:
            dist = ep.dist.name if ep.dist else ""
            builtin = dist == BUILTIN_DIST
            if not builtin and selected is not None and ep.name not in selected and dist not in selected:
                continue
            started = time.perf_counter()
            record = PluginRecord(
                name=ep.name if builtin else f"{dist}:{ep.name}" if dist else ep.name,
                dist=dist,
                version=ep.dist.version if ep.dist else "",
                builtin=builtin,
                module=str(getattr(ep, "value", "")).split(":")[0].strip().split(".")[0],
            )
            try:
                with plugin_code():
                    module = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin (even one calling sys.exit) never takes the CLI down
                record.load_seconds = time.perf_counter() - started
                self._fail(record, f"import failed: {describe(exc)}")
                continue
            self.add_plugin(module, record)
            record.load_seconds = time.perf_counter() - started

    def _warn_unmatched(self, selected: set[str], entry_points: list) -> None:
        """LSPT_LOAD_PLUGINS names that match no installed external plugin: one warning each."""
        known = sorted({n for ep in entry_points if not (ep.dist and ep.dist.name == BUILTIN_DIST)
                        for n in (ep.name, ep.dist.name if ep.dist else ep.name)})
        for name in sorted(selected - set(known)):
            close = difflib.get_close_matches(name, known, n=2)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else \
                f" (installed: {shorten_list(known, 10)})" if known else " (no external plugin is installed)"
            warning = f"Warning: {one_line(f'LSPT_LOAD_PLUGINS names {name!r}, which matches no installed plugin{hint}')}"
            self.warnings.append(warning)
            print(warning, file=sys.stderr)

    def add_plugin(self, plugin: object, record: PluginRecord | str) -> PluginRecord:
        """Register a plugin object (module or instance) and collect its components."""
        if isinstance(record, str):
            record = PluginRecord(name=record)
        if not record.module:
            record.module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        try:
            self.pm.register(plugin, name=record.name)
        except Exception as exc:
            self._fail(record, f"registration failed: {exc}")
            return record
        self.records[record.name] = record
        for kind, hook_name in _REGISTER_HOOKS.items():
            impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.plugin_name == record.name]
            if not impls:
                continue
            hook = impls[0].function
            registered: list[str] = []

            def register(spec, _kind=kind, _registered=registered):
                if not isinstance(spec, tuple(KIND_OF_SPEC)):
                    raise PluginError(
                        f"plugin '{record.name}' called register() with {type(spec).__name__}; "
                        f"expected a lspt_cli.specs.*Spec"
                    )
                registry = self.registry(_kind)
                name = getattr(spec, "name", None)
                if isinstance(spec, registry.spec_type) and isinstance(name, str) and registry.registered(name):
                    # a name clash drops only the clashing component, and says so (the rest of the plugin loads)
                    first = self.record_of(registry.provider(name))
                    why = (f"{_kind} '{name}' is registered twice: by {first.described} and by "
                           f"{record.described}; the second was dropped")
                    record.dropped.setdefault(_kind, {})[name] = why
                    self._fail(record, why, outcome="lost a component")
                    return
                registry.add(spec, record.name)
                _registered.append(spec.name)

            try:
                with plugin_code():
                    hook(register=register)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                self.registry(kind).remove_provider(record.name)
                self._fail(record, f"{hook_name} failed: {describe(exc)}", registered=True)
                continue
            if registered:
                record.components[kind] = registered
        return record

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin and everything it registered (tests use throwaway plugins)."""
        for kind in _REGISTER_HOOKS:
            self.registry(kind).remove_provider(name)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.records.pop(name, None)

    def _fail(self, record: PluginRecord, message: str, registered: bool = False, outcome: str = "was skipped") -> None:
        record.error = message if record.error is None else f"{record.error}; {message}"
        self.records[record.name] = record
        if _strict():
            raise PluginError(f"{record.described}: {message}", hint="unset LSPT_STRICT_PLUGINS to skip broken plugins")
        warning = f"Warning: {one_line(f'{record.described} {outcome}: {message}')}"
        self.warnings.append(warning)
        print(warning, file=sys.stderr)

    def record_of(self, plugin_name: str) -> PluginRecord:
        return self.records.get(plugin_name) or PluginRecord(name=plugin_name)

    # -- commands --------------------------------------------------------------------------
    def register_commands(self, app, reserved: Iterable[str] = ()) -> None:
        """Let each plugin add Typer commands; a name already taken (a built-in such as `tune`, or
        an earlier plugin's command) is refused with a warning naming the plugin."""
        taken = set(reserved)
        for impl in getattr(self.pm.hook, "lspt_register_commands").get_hookimpls():
            record = self.record_of(impl.plugin_name)
            n_commands, n_groups = len(app.registered_commands), len(app.registered_groups)
            try:
                with plugin_code():
                    impl.function(app=app)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                del app.registered_commands[n_commands:], app.registered_groups[n_groups:]
                self._fail(record, f"lspt_register_commands failed: {describe(exc)}", outcome="added no commands")
                continue
            if len(app.registered_commands) > n_commands or len(app.registered_groups) > n_groups:
                problem = _unbuildable(app)
                if problem:  # e.g. a parameter annotation Typer cannot resolve: it would break `lspt --help`
                    del app.registered_commands[n_commands:], app.registered_groups[n_groups:]
                    self._fail(record, f"its commands cannot be built: {problem}", outcome="added no commands")
                    continue
            for registered, name_of in ((app.registered_commands, _command_name), (app.registered_groups, _group_name)):
                start = n_commands if registered is app.registered_commands else n_groups
                kept = []
                for info in registered[start:]:
                    name = name_of(info)
                    if name in taken:
                        owner = "a built-in command" if name in reserved else "already taken by another plugin"
                        self._fail(record, f"command '{name}' is {owner}", outcome="could not add a command")
                        continue
                    taken.add(name)
                    kept.append(info)
                registered[start:] = kept

    # -- events ----------------------------------------------------------------------------
    def emit(self, hook_name: str, **kwargs: Any) -> None:
        """Call an event hook on every plugin. One that raises (or calls sys.exit) is a failure of
        that plugin: one warning, and its event hooks stay off for the rest of the process."""
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            if impl.plugin_name in self.muted:
                continue
            try:
                with plugin_code():
                    impl.function(**{k: kwargs[k] for k in impl.argnames})
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                self.muted.add(impl.plugin_name)
                self._fail(self.record_of(impl.plugin_name), f"{hook_name} failed: {describe(exc)}",
                           outcome="is switched off for the rest of this run")

    def owner_of_module(self, module_name: str) -> PluginRecord | None:
        """The external plugin whose code lives in `module_name` (None: lspt's own or a library)."""
        for record in self.records.values():
            prefix = record.module
            if not record.builtin and prefix and (module_name == prefix or module_name.startswith(prefix + ".")):
                return record
        return None

    def provider_of_factory(self, factory: object) -> PluginRecord | None:
        """The plugin that registered a spec with this factory (or `prepare`), if any."""
        for kind in _REGISTER_HOOKS:
            registry = self.registry(kind)
            for spec in registry:
                if factory in (getattr(spec, "factory", None), getattr(spec, "prepare", None)):
                    return self.record_of(registry.provider(spec.name))
        return None


def dataset_owner_label(dataset: str) -> str:
    """Which plugin registered a dataset, for errors about its code."""
    host = get_host()
    return host.record_of(host.datasets.provider(dataset)).label if dataset in host.datasets else "?"


@contextlib.contextmanager
def plugin_code():
    """Run plugin code with its stdout routed to stderr: a `print` must not corrupt `--json`."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def describe(exc: BaseException) -> str:
    """One line for an exception from plugin code, `sys.exit(3)` included."""
    from .errors import LsptError

    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    if isinstance(exc, LsptError):
        return one_line(exc.message)
    return one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def plugin_of_traceback(tb: TracebackType | None) -> str | None:
    """The label of the external plugin whose code raised (innermost plugin frame), or None."""
    if _host is None:
        return None
    modules = []
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    for module in reversed(modules):
        record = _host.owner_of_module(module)
        if record is not None:
            return record.label
    return None


def spec_problem(spec: object) -> str | None:
    """What is malformed in a registered spec (wrong field types), or None."""
    from .specs import BackboneSpec, DatasetSpec, ExecutorSpec, LoggerSpec, RecipeSpec, StrategySpec

    def factory_ok(value: object) -> bool:
        return callable(value) or (isinstance(value, str) and ":" in value and value.partition(":")[0] != "")

    if not isinstance(getattr(spec, "description", ""), str):
        return "a description that is not a string"
    if isinstance(spec, (BackboneSpec, StrategySpec, LoggerSpec, ExecutorSpec)) and not factory_ok(spec.factory):
        return f"factory {spec.factory!r}; expected a callable or 'package.module:attribute'"
    if isinstance(spec, BackboneSpec):
        for key in ("embed_dim", "depth", "num_prefix_tokens"):
            value = getattr(spec, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "num_prefix_tokens" else 1):
                return f"{key}={value!r}; expected a positive integer"
        if not isinstance(spec.readout, str) or not spec.readout:
            return f"readout={spec.readout!r}; expected a readout name such as 'cls'"
    if isinstance(spec, StrategySpec):
        if not isinstance(spec.defaults, dict) or not all(isinstance(k, str) for k in spec.defaults):
            return f"defaults of type {type(spec.defaults).__name__}; expected a dict of option name -> value"
        if spec.count_params is not None and not callable(spec.count_params):
            return "count_params that is not callable"
    if isinstance(spec, DatasetSpec):
        if not factory_ok(spec.prepare):
            return f"prepare {spec.prepare!r}; expected a callable or 'package.module:attribute'"
        if not isinstance(spec.benchmark, str) or not isinstance(spec.needs_root, bool):
            return "benchmark/needs_root of the wrong type (expected str and bool)"
    if isinstance(spec, ExecutorSpec) and (not isinstance(spec.options, dict) or not isinstance(spec.requires, tuple)):
        return "options/requires of the wrong type (expected a dict of option -> help and a tuple of module names)"
    if isinstance(spec, LoggerSpec) and (not isinstance(spec.requires, tuple) or not all(isinstance(m, str) for m in spec.requires)):
        return f"requires={spec.requires!r}; expected a tuple of module names"
    if isinstance(spec, LoggerSpec) and (not isinstance(spec.options, dict) or not all(isinstance(k, str) for k in spec.options)):
        return f"options of type {type(spec.options).__name__}; expected a dict of option -> help"
    if isinstance(spec, RecipeSpec) and not isinstance(spec.values, dict):
        return f"values of type {type(spec.values).__name__}; expected the parsed TOML table (a dict)"
    return None


def _unbuildable(app) -> str | None:
    """Why Typer cannot turn `app` into a Click command, or None (builds it once, no torch)."""
    from typer.main import get_command

    try:
        get_command(app)
    except Exception as exc:
        return describe(exc)
    return None


def _command_name(info) -> str:
    from typer.main import get_command_name

    return info.name or get_command_name(info.callback.__name__)


def _group_name(info) -> str:
    return info.name or getattr(getattr(info.typer_instance, "info", None), "name", None) or ""


def _strict() -> bool:
    return os.environ.get("LSPT_STRICT_PLUGINS", "") not in ("", "0")


def _selected_external_plugins() -> set[str] | None:
    value = os.environ.get("LSPT_LOAD_PLUGINS")
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, loaded from entry points on first use."""
    global _host
    if _host is None:
        host = PluginHost()
        _host = host
        try:
            host.load_entry_points()
        except BaseException:
            _host = None
            raise
    return _host


def reset_host() -> None:
    """Forget the loaded host (tests; a changed LSPT_LOAD_PLUGINS)."""
    global _host
    _host = None


# -- factories ----------------------------------------------------------------------------------------
def resolve_factory(factory: Factory) -> Callable[..., Any]:
    """Turn "pkg.mod:attr" into the attribute (importing pkg.mod); callables pass through."""
    if callable(factory):
        return factory
    try:
        module_name, _, attr = factory.partition(":")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # a typo in a plugin's factory string is that plugin's error, not a traceback
        raise _factory_error(factory, f"{type(exc).__name__}: {exc}") from None
    if not callable(obj):
        raise _factory_error(factory, f"it is a {type(obj).__name__}, not a callable")
    return obj


def _factory_error(factory: str, problem: str):
    """A PluginError naming the plugin that registered `factory` (looked up only on failure)."""
    record = get_host().provider_of_factory(factory)
    owner = f"plugin {record.label}" if record is not None else "a plugin"
    return PluginError(f"{owner} names a factory {factory!r} that cannot be loaded: {one_line(problem)}",
                       hint="fix the 'package.module:attribute' string in the plugin's registration")


# -- optional extras ---------------------------------------------------------------------------------
def requirement_problem(module: str, *, import_it: bool) -> str | None:
    """Why `module` cannot be used, or None. `import_it` also catches a broken install (a protobuf
    mismatch) at the price of the import; without it the module is only looked up (`lspt list`)."""
    from importlib.util import find_spec

    try:
        if not import_it:
            return None if find_spec(module) is not None else "not installed"
        importlib.import_module(module)
    except ImportError:
        return "not installed"
    except Exception as exc:  # noqa: BLE001  (a broken install, or a parent package set to None)
        return f"cannot be imported: {one_line(f'{type(exc).__name__}: {exc}')}"
    return None


def check_requirements(spec, asked_as: str, *, import_it: bool = True) -> None:
    """Every module a component `requires` is usable, else one UsageError naming the module and the
    extra that installs it; `asked_as` is how the user named the component (`--log mlflow`)."""
    for module in spec.requires:
        problem = requirement_problem(module, import_it=import_it)
        if problem:
            install = f"pip install 'lspt[{spec.extra}]'" if spec.extra else f"pip install {module}"
            raise UsageError(f"{asked_as} needs the Python package '{module}' ({problem})",
                             hint=f"install the extra: {install}")


def requirements_installed(spec) -> bool:
    """Whether every module a component requires can be found, without importing it."""
    return all(requirement_problem(module, import_it=False) is None for module in spec.requires)
