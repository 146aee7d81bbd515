"""The run config's training settings: ONE typed table, from which everything else is derived.

Each `Setting` says its type, bounds or choices, default (per protocol where the protocol decides
it), help text, command-line flags and where its value comes from. Derived from `SETTINGS`, never
written again by hand:

- `TrainConfig`, the dataclass a run carries (config.json's `train`, a checkpoint's resume);
- `validate_train` (recipes, config.json, the resolved config) and `check_flags` (the command line);
- `PROTOCOL_DEFAULTS` and `CHOICES`;
- the `lspt tune` and `lspt sweep` options (`cli/train_options.py`) and their `--help` texts;
- which flags `--resume` may change, and which keys a sweep grid may search.

Adding a training option is one `Setting` here plus the code that uses it; tests/test_settings.py
proves each setting reaches `tune`, `sweep`, recipes and config.json. Torch-free and import-light:
`lspt --help` builds its options from this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Callable

from .errors import ConfigError
from .specs import READOUTS
from .validate import MAX_SEED, MAX_THREADS, Rule, device_problem, option_name

PROTOCOLS = ("paper", "lspt")  # what a run trains under (config.json, summary.json, a bundle)
# `auto` (the default) is resolved to one of PROTOCOLS when a run is planned (recipes.auto_protocol)
PROTOCOL_CHOICES = ("auto", *PROTOCOLS)
# logger names separated by commas, or nothing (`--log tensorboard,mlflow`; lspt_cli/loggers.py)
LOGGER_NAMES_FORM = re.compile(r"\s*[\w.-]+(\s*,\s*[\w.-]+)*\s*|\s*")
VPT_BASE = "KMnP/vpt configs/base-prompt.yaml"


@dataclass(frozen=True)
class Setting:
    """One training knob. `default` is the plain default; `by_protocol` overrides it per protocol
    (docs/protocol.md); `bool_values` maps a --x/--no-x switch onto a string setting."""

    name: str
    kind: type
    default: Any
    help: str
    source: str = ""  # where the default comes from: an official file:line, a paper table, or "lspt"
    rule: Rule | None = None
    choices: tuple | None = None
    by_protocol: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()  # extra spellings after the first (`--wd`)
    bool_values: tuple[str, str] | None = None  # (value of --x, value of --no-x)
    check: Callable[[Any], str | None] | None = None  # a rule of its own (a device's form)
    resume_may_change: bool = False  # where and how fast a run continues, never what it computes
    changes_result: bool = True  # False: how a run is carried out or watched, never what it computes
    default_text: str = ""  # `--help`'s default where it is not a value ("the backbone's")

    @property
    def flag(self) -> str:
        return option_name(self.name)

    @property
    def cli_flags(self) -> tuple[str, ...]:
        return (self.flag, *self.flags)

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` for this setting (type, bounds, choices), or None."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and self.kind is not bool or not isinstance(value, self.kind):
            return f"must be {self.kind.__name__}, got {type(value).__name__} {value!r}"
        if self.rule is not None:
            return self.rule.problem(value)
        if self.choices is not None and value not in self.choices:
            return f"must be {one_of(self.choices)}, got {value!r}"
        return self.check(value) if self.check is not None else None


def logger_names_problem(value: str) -> str | None:
    if LOGGER_NAMES_FORM.fullmatch(value):
        return None
    return f"must be logger names separated by commas (lspt list loggers), got {value!r}"


def parse_log_options(value: str | None) -> list[tuple[str | None, str, str]]:
    """`log_options` ("path=a.csv,tensorboard.dir=tb") -> [(None, "path", "a.csv"), ("tensorboard", "dir", "tb")].
    ValueError for an item without '=' or with an empty key (lspt_cli/loggers.py checks the keys)."""
    out = []
    for item in (value or "").split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE or LOGGER.KEY=VALUE, got {item.strip()!r}")
        name, dot, option = key.rpartition(".")
        if dot and not (name and option):
            raise ValueError(f"expected KEY=VALUE or LOGGER.KEY=VALUE, got {item.strip()!r}")
        out.append((name if dot else None, option, val.strip()))
    return out


def _log_options_problem(value: str) -> str | None:
    try:
        parse_log_options(value)
    except ValueError as exc:
        return str(exc)
    return None


def one_of(allowed) -> str:
    quoted = [f"'{a}'" for a in allowed]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


SETTINGS: tuple[Setting, ...] = (
    Setting("protocol", str, "auto", choices=PROTOCOL_CHOICES, source="docs/protocol.md",
            help="paper (the official VPT/GaPT training), lspt (lspt's improvements) or auto (paper where a paper "
                 "recipe covers the backbone and benchmark, else lspt); each item's own flag still wins."),
    Setting("epochs", int, 100, "Training epochs.", f"{VPT_BASE}:19 (TOTAL_EPOCH)", Rule(int, 1, 1_000_000)),
    Setting("warmup_epochs", int, 10, "Epochs of linear lr warm-up before the cosine decay.",
            f"{VPT_BASE}:18 (WARMUP_EPOCH)", Rule(int, 0, 1_000_000)),
    Setting("batch_size", int, 64, "Training images per step.",
            f"lspt's fallback; the benchmarks' recipes use VPT's 128 ({VPT_BASE}:25)", Rule(int, 1, 1_048_576)),
    Setting("optimizer", str, "sgd", "sgd or adamw.", f"{VPT_BASE}:14", choices=("sgd", "adamw")),
    Setting("lr", float, 0.1, "Base learning rate.", "lspt's fallback; the recipes set the papers' per-task lr",
            Rule(float, 0, 1e6, low_open=True)),
    Setting("weight_decay", float, 1e-4, "Weight decay (matrices and prompts only; never biases, gates or temperatures).",
            f"{VPT_BASE}:16", Rule(float, 0, 1e6), flags=("--wd",)),
    Setting("momentum", float, 0.9, "SGD momentum.", f"{VPT_BASE}:15", Rule(float, 0, 1, high_open=True)),
    Setting("label_smoothing", float, 0.0, "Label smoothing of the training loss (0 = plain cross-entropy).",
            f"{VPT_BASE}:13 (LOSS softmax: none)", Rule(float, 0, 1, high_open=True)),
    Setting("lr_scaling", str, "none", "none, or batch/256 (the lr trained is lr * batch / 256, VPT's convention).",
            "KMnP/vpt tune_fgvc.py:31 (batch/256)", choices=("none", "batch/256")),
    Setting("grad_clip", float, 0.0, "Max gradient norm; 0 disables.", "VPT/GaPT clip nothing; lspt clips at 1",
            Rule(float, 0, 1e12), by_protocol={"paper": 0.0, "lspt": 1.0}),
    Setting("amp", str, "off", "auto (bf16 on GPUs and on CPUs with native bf16: AVX512-BF16/AMX), bf16 or off.",
            "the papers train fp32", choices=("auto", "bf16", "off"), by_protocol={"paper": "off", "lspt": "auto"}),
    Setting("schedule", str, "per-epoch", "per-epoch (VPT/GaPT's LambdaLR) or per-step warm-up + cosine.",
            "KMnP/vpt src/solver/lr_scheduler.py (stepped per epoch)", choices=("per-epoch", "per-step"),
            by_protocol={"paper": "per-epoch", "lspt": "per-step"}),
    Setting("head_init", str, "kaiming", "kaiming (VPT/GaPT) or normal (N(0, 0.01^2)).",
            "KMnP/vpt src/models/mlp.py (kaiming_normal fan_out)", choices=("kaiming", "normal"),
            by_protocol={"paper": "kaiming", "lspt": "normal"}),
    Setting("ddp_batch", str, "split", "Under torchrun: split --batch-size over the ranks (split), or use it on every rank (per-rank).",
            "KMnP/vpt src/data/loader.py:62 (BATCH_SIZE / NUM_GPUS)", choices=("split", "per-rank"),
            by_protocol={"paper": "split", "lspt": "per-rank"}),
    Setting("readout", str, "", "cls, mean-norm (GaPT's MAE readout), mean-ln (VPT's) or cls+mean (DINOv2's linear evaluation; the head takes 2 x D).", choices=("", *READOUTS),
            default_text="the backbone's"),
    Setting("img_size", int, 0, "Input size N: N x N images, position embeddings resampled to the grid as the "
            "model's authors do (docs/backbones.md); a multiple of the patch size. 0 = the backbone's own size.",
            "lspt", Rule(int, 0, 8192), default_text="the backbone's"),
    Setting("seed", int, 42, "Random seed (init, data order, augmentation, dropout).",
            "KMnP/vpt's first seed (42, 44, 82, 100, 800)", Rule(int, 0, MAX_SEED)),
    Setting("num_workers", int, 0, "Data-loader worker processes (results do not depend on it).", rule=Rule(int, 0, 256),
            resume_may_change=True, changes_result=False),
    Setting("eval_batch_size", int, 0, "Images per evaluation step (0 = --batch-size).", rule=Rule(int, 0, 1_048_576),
            changes_result=False),
    Setting("device", str, "auto", "auto, cpu, cuda, cuda:N or mps.", check=device_problem, resume_may_change=True,
            changes_result=False),
    Setting("threads", int, 0, "torch CPU threads (0 = one per core).", rule=Rule(int, 0, MAX_THREADS),
            resume_may_change=True, changes_result=False),
    Setting("loggers", str, "", "Experiment trackers, comma-separated: tensorboard, mlflow (lspt list loggers). "
            "Under torchrun spell it --loggers (torchrun reads --log as its --log-dir).", flags=("--log",),
            check=logger_names_problem, default_text="none", changes_result=False),
    Setting("log_options", str, "", "Logger options, KEY=VALUE[,KEY=VALUE] (LOGGER.KEY=VALUE for one of several "
            "loggers); each key one the logger declares (lspt list loggers).", flags=("--log-opt",),
            check=lambda value: _log_options_problem(value), default_text="none", changes_result=False),
    Setting("augment", bool, True, "Training augmentation (FGVC/custom crop+flip); --no-augment trains on the eval transform."),
    Setting("compile", bool, False, "torch.compile the prompted forward (compile time reported apart; eager where unavailable)."),
    Setting("grad_checkpointing", bool, False, "Recompute each frozen block in backward: less memory, more time."),
    Setting("feature_cache", str, "auto", "Linear probe: compute the frozen features once (auto where exact; "
            "--feature-cache with augmentation too, --no-feature-cache never).", choices=("auto", "on", "off"),
            bool_values=("on", "off")),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    p: {s.name: s.by_protocol[p] for s in SETTINGS if p in s.by_protocol} for p in PROTOCOLS}
CHOICES: dict[str, tuple] = {s.name: s.choices for s in SETTINGS if s.choices is not None}
TRAIN_RULES: dict[str, Rule] = {s.name: s.rule for s in SETTINGS if s.rule is not None}
RESUME_MAY_CHANGE: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.resume_may_change)
RESULT_NEUTRAL: tuple[str, ...] = tuple(s.name for s in SETTINGS if not s.changes_result)


class _TrainConfigMethods:
    def validate(self, where: str = "config") -> "TrainConfig":
        """Every value of its type, in bounds and among its choices: ConfigError naming the key."""
        for setting in SETTINGS:
            problem = setting.problem(getattr(self, setting.name))
            if problem:
                raise ConfigError(f"{where}: '{setting.name}' {problem}")
        return self

    @property
    def scaled_lr(self) -> float:
        """The lr the schedule starts from: VPT's tune scripts multiply by batch/256 (tune_fgvc.py:31)."""
        return self.lr * self.batch_size / 256 if self.lr_scaling == "batch/256" else self.lr

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


TrainConfig = make_dataclass(
    "TrainConfig",
    [(s.name, s.kind.__name__, field(default=s.default, metadata={"setting": s})) for s in SETTINGS],
    bases=(_TrainConfigMethods,),
    namespace={"__doc__": "Every training knob of a run, one field per `Setting` of SETTINGS (lspt_cli/settings.py); "
                          "the items' defaults are the `paper` protocol's; `protocol` is `auto` until "
                          "recipes.resolve_config resolves it.", "__module__": __name__},
)


def coerce_train_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Names and types of training values (an int is accepted where a float is expected)."""
    out = {}
    for key, value in values.items():
        setting = BY_NAME.get(key)
        if setting is None:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: {', '.join(BY_NAME)}")
        if setting.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and setting.kind is not bool or not isinstance(value, setting.kind):
            raise ConfigError(f"{where}: '{key}' must be {setting.kind.__name__}, got {type(value).__name__} {value!r}")
        out[key] = value
    return out


def check_flags(values: dict[str, Any]) -> None:
    """The command-line layer: a ConfigError (exit 2) naming the flag (`--threads: must be ...`)."""
    for key, value in values.items():
        problem = BY_NAME[key].problem(value) if key in BY_NAME else None
        if problem:
            raise ConfigError(f"{option_name(key)}: {problem}", hint="see 'lspt tune --help'")


def default_text(setting: Setting) -> str:
    """`--help`'s "[default: the recipe's, else 100]", or per protocol where the protocol decides."""
    if setting.by_protocol:
        shown = ", ".join(f"{value} ({protocol})" for protocol, value in setting.by_protocol.items())
        return f"[default: the recipe's, else by --protocol: {shown}]"
    return f"[default: the recipe's, else {setting.default_text or setting.default}]"


def help_text(setting: Setting) -> str:
    return f"{setting.help}  {default_text(setting)}"
