"""Every training setting (lspt_cli/settings.py) reaches every place a run config is made or read:
`lspt tune` (flag, --help, --dry-run), `lspt sweep` (flag, a trial's resolved config file), recipes,
and config.json (written, read back). A new Setting is covered here without editing this file,
as long as a value other than its default can be derived for it (else SAMPLES names one)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from plans import planned_trials

from lspt_cli.settings import BY_NAME, PROTOCOL_DEFAULTS, SETTINGS, Setting, TrainConfig

SAMPLES = {"device": "cpu", "loggers": "tensorboard", "log_options": "tensorboard.dir=tb"}  # strings that are not a choice among a few
TUNE = ("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear")


def sample(setting: Setting):
    """A valid value that is not the setting's default (the paper protocol's, which the runs here use)."""
    if setting.name in SAMPLES:
        return SAMPLES[setting.name]
    taken = {setting.default}
    if setting.choices is not None:
        return next(c for c in setting.choices if c not in taken)
    if setting.kind is bool:
        return not setting.default
    if setting.kind is int:
        return setting.default + 1
    if setting.kind is float:
        value = next(v for v in (0.5, 0.25, 2.0) if v not in taken and not setting.rule.problem(v))
        return value
    raise AssertionError(f"no sample value for setting '{setting.name}': add one to SAMPLES")


def flag_args(setting: Setting, value) -> list[str]:
    if setting.bool_values is not None:
        return [setting.flag if value == setting.bool_values[0] else f"--no-{setting.flag[2:]}"]
    if setting.kind is bool:
        return [setting.flag if value else f"--no-{setting.flag[2:]}"]
    return [setting.flag, str(value)]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_reaches_tune_sweep_recipes_and_config_json(setting, cli, tmp_path):
    value = sample(setting)
    assert setting.problem(value) is None and value != getattr(TrainConfig(), setting.name)

    # tune: a flag, shown in --help with its default, and in the resolved config
    assert setting.flag in cli("tune", "--help").output.replace("\n", " ")
    result = cli(*TUNE, *flag_args(setting, value), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train"][setting.name] == value

    # recipes: a [train] key, validated and resolved
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"[train]\n{setting.name} = {json.dumps(value)}\n")
    result = cli(*TUNE, "--recipe", str(recipe), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.stdout)
    assert resolved["train"][setting.name] == value

    # config.json: what a run writes is what --resume and `tune --config` read back
    from lspt_cli import schema

    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in resolved.items() if k not in ("lr_trained", "run_dir")}))
    assert getattr(schema.run_config(path).train, setting.name) == value
    result = cli("tune", "--config", str(path), "--dry-run", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["train"][setting.name] == value

    # sweep: a flag (except seed: --seeds), and every trial's resolved config file carries the value
    if setting.name == "seed":
        assert "--seed " not in cli("sweep", "--help").output.replace("\n", " ")
        return
    result = cli("sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--seeds", "1",
                 "--grid", "weight_decay=0,0.001" if setting.name != "weight_decay" else "lr=0.1,0.2",
                 *flag_args(setting, value), "--out", str(tmp_path / "s"), "--plan")
    assert result.exit_code == 0, result.output
    trials = planned_trials(result.stdout)
    assert len(trials) == 2 and all(t["train"][setting.name] == value for t in trials)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.rule is not None or s.choices is not None],
                         ids=lambda s: s.name)
def test_a_bad_value_is_refused_naming_the_flag_or_the_file(setting, cli, tmp_path):
    bad = "nonsense" if setting.choices is not None else (setting.rule.high * 10 if setting.rule.high != float("inf") else -1)
    if setting.kind is int and not isinstance(bad, str):
        bad = int(bad)
    if setting.bool_values is None:  # a --x/--no-x switch takes no value on the command line
        result = cli(*TUNE, setting.flag, str(bad), "--dry-run")
        assert result.exit_code == 2 and f"Error: {setting.flag}" in result.output, result.output
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f"[train]\n{setting.name} = {json.dumps(bad)}\n")
    result = cli(*TUNE, "--recipe", str(recipe), "--dry-run")
    assert result.exit_code == 2 and str(recipe) in result.output and f"'{setting.name}'" in result.output


def test_the_table_is_the_single_source():
    """TrainConfig's fields, PROTOCOL_DEFAULTS and each field's default come from SETTINGS alone."""
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [s.name for s in SETTINGS]
    assert all(f.metadata["setting"] is BY_NAME[f.name] and f.default == BY_NAME[f.name].default
               for f in dataclasses.fields(TrainConfig))
    assert PROTOCOL_DEFAULTS["paper"] == {s.name: s.by_protocol["paper"] for s in SETTINGS if s.by_protocol}
    for setting in SETTINGS:  # the plain default is the paper protocol's, where the protocol decides
        assert setting.by_protocol.get("paper", setting.default) == setting.default, setting.name
        assert setting.help and setting.problem(setting.default) is None, setting.name


def test_label_smoothing_reaches_the_loss(cli, tmp_path, monkeypatch):
    """The setting added to show what a new option costs (one Setting + its use): it reaches the loss."""
    import torch.nn.functional as F

    from lspt_cli.engine import train

    seen = []  # (label_smoothing, reduction) of every cross-entropy: training steps and evaluation
    real = F.cross_entropy

    def spy(*args, **kwargs):
        seen.append((kwargs.get("label_smoothing", 0.0), kwargs.get("reduction", "mean")))
        return real(*args, **kwargs)

    monkeypatch.setattr(train.F, "cross_entropy", spy)
    result = cli(*TUNE, "--label-smoothing", "0.1", "--epochs", "1", "--warmup-epochs", "0", "--out", str(tmp_path / "r"),
                 "--json", "-q")
    assert result.exit_code == 0, result.output
    assert (0.1, "mean") in seen  # the training loss is smoothed
    assert {smoothing for smoothing, reduction in seen if reduction == "sum"} == {0.0}  # evaluation's is not


def test_a_config_json_without_a_newer_setting_reads_it_at_its_default(tmp_path):
    """A run (or sweep trial) written before a setting existed trained at the setting's default:
    config.json without the key resumes, and a sweep does not call the trial changed."""
    from types import SimpleNamespace

    from lspt_cli import schema
    from lspt_cli.recipes import resolve_config
    from lspt_cli.sweep.state import config_mismatch

    config = resolve_config(backbone="vit-tiny", strategy="linear", task="digits", benchmark="custom", registered_recipes=[])
    doc = config.to_json()
    del doc["train"]["label_smoothing"]
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert schema.run_config(tmp_path / "config.json").train.label_smoothing == 0.0
    trial = SimpleNamespace(run_dir=tmp_path, config=config)
    assert config_mismatch(trial) is None
    config.train.label_smoothing = 0.1
    assert "label_smoothing 0.0 != 0.1" in config_mismatch(trial)
