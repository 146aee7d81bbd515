"""Numbers, devices and sizes from options and recipes (lspt_cli/validate.py), through the real CLI.

Non-finite or out-of-range values (`--lr nan`, a seed of 2**70, `--threads 100000`, zero or
negative epochs and batch sizes) are usage errors naming the option (or the recipe file and key),
exit 2, before anything runs; a malformed or absent `--device` likewise; a strategy whose
parameters cannot fit in memory (`--set num_prompts=1000000000`) is refused with the estimate
before a byte is allocated.
"""

from __future__ import annotations

import pytest

from lspt_cli.errors import ConfigError, UsageError
from lspt_cli.settings import TRAIN_RULES
from lspt_cli.validate import MAX_SEED, check_param_memory, torch_device

from .conftest import assert_clean_error

BASE = ["tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep", "--dry-run"]

OPTION_CASES = [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-inf"), ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "1e300"),
    ("--weight-decay", "nan"), ("--weight-decay", "-1"), ("--weight-decay", "inf"),
    ("--grad-clip", "nan"), ("--grad-clip", "inf"), ("--grad-clip", "-1"),
    ("--seed", str(2**70)), ("--seed", str(2**63 - 1)), ("--seed", str(MAX_SEED + 1)), ("--seed", "-1"),
    ("--threads", "100000"), ("--threads", "-1"),
    ("--epochs", "0"), ("--epochs", "-5"), ("--epochs", str(10**12)),
    ("--warmup-epochs", "-1"),
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--batch-size", str(10**9)),
    ("--num-workers", "-1"), ("--num-workers", "100000"),
    ("--device", "bogus"), ("--device", "cuda:x"), ("--device", ""), ("--device", "cuda:-1"), ("--device", "CPU "),
]


@pytest.mark.parametrize("option,value", OPTION_CASES, ids=[f"{o} {v}" for o, v in OPTION_CASES])
def test_bad_number_is_a_usage_error_naming_the_option(option, value, cli_err, tally):
    code, out, err = cli_err(*BASE, option, value)
    assert_clean_error(code, out, err, option, exit_code=2)
    tally.bad_input(f"option: {option} {value[:24]}")


@pytest.mark.parametrize("option,value", [("--lr", "0.05"), ("--seed", str(MAX_SEED)), ("--threads", "0"),
                                          ("--grad-clip", "0"), ("--device", "cuda:1"), ("--device", "mps")])
def test_edge_values_that_are_fine(option, value, cli_err):
    code, out, err = cli_err(*BASE, option, value)
    assert code == 0, err  # a dry run describes a config; it does not need the device to exist


RECIPE_CASES = {
    "lr = nan": ("lr", "lr = nan"),
    "lr = inf": ("lr", "lr = inf"),
    "grad_clip = nan": ("grad_clip", "grad_clip = nan"),
    "weight_decay = -inf": ("weight_decay", "weight_decay = -inf"),
    "seed = 2**63-1": ("seed", f"seed = {2**63 - 1}"),
    "seed = -1": ("seed", "seed = -1"),
    "threads = 100000": ("threads", "threads = 100000"),
    "epochs = 0": ("epochs", "epochs = 0"),
    "batch_size = -64": ("batch_size", "batch_size = -64"),
    "momentum = 1.0": ("momentum", "momentum = 1.0"),
    "device = 'bogus'": ("device", 'device = "bogus"'),
}


@pytest.mark.parametrize("what", RECIPE_CASES)
def test_bad_number_in_a_recipe_names_file_and_key(what, tmp_path, cli_err, tally):
    key, line = RECIPE_CASES[what]
    recipe = tmp_path / "hostile.toml"
    recipe.write_text(f'description = "x"\n[train]\n{line}\n')
    code, out, err = cli_err(*BASE, "--recipe", recipe)
    assert_clean_error(code, out, err, str(recipe), f"'{key}'", exit_code=2)
    tally.bad_input(f"recipe: {what}")


def test_bad_number_in_a_task_override_of_a_recipe(tmp_path, cli_err, tally):
    recipe = tmp_path / "hostile.toml"
    recipe.write_text('description = "x"\n[tasks.digits.train]\nlr = nan\n')
    code, out, err = cli_err(*BASE, "--recipe", recipe)
    assert_clean_error(code, out, err, "'lr'", "tasks.digits", exit_code=2)
    tally.bad_input("recipe: lr = nan in [tasks.digits.train]")


DEVICE_CASES = ["bogus", "cuda:99999", "cuda:x", "", "gpu", "cpu:0:1"]


@pytest.mark.parametrize("name", DEVICE_CASES)
def test_torch_device_refuses_what_does_not_exist(name, tally):
    with pytest.raises(UsageError, match="--device"):
        torch_device(name)
    tally.bad_input(f"device: {name!r}")


def test_absent_accelerators_are_usage_errors(tally):
    import torch

    mps = getattr(torch.backends, "mps", None)
    absent = [n for n, there in (("cuda", torch.cuda.is_available()), ("cuda:0", torch.cuda.is_available()),
                                 ("mps", mps is not None and mps.is_available())) if not there]
    for name in absent:
        with pytest.raises(UsageError, match="not available"):
            torch_device(name)
        tally.bad_input(f"device: {name} on a machine without it")
    assert torch_device("cpu").type == "cpu" and torch_device("auto").type in ("cpu", "cuda")


def test_tune_on_an_absent_device_stops_before_training(tmp_path, cli_err, monkeypatch, tally):
    import torch

    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.setenv("LSPT_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    code, out, err = cli_err(*BASE[:-1], "--device", "mps", "--epochs", "1", "--out", run, "-q")
    assert_clean_error(code, out, err, "--device mps", exit_code=2)
    assert not run.exists() or not any(run.iterdir())
    tally.bad_input("device: tune --device mps without MPS")


def test_absurd_prompt_count_is_refused_with_the_estimate(tmp_path, cli_err, monkeypatch, tally):
    monkeypatch.setenv("LSPT_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    code, out, err = cli_err(*BASE[:-1], "--set", "num_prompts=1000000000", "--epochs", "1", "--out", run, "-q")
    line = assert_clean_error(code, out, err, "num_prompts", "trainable parameters", "memory", exit_code=2)
    assert "TB" in line or "PB" in line  # the estimate, in a unit a person reads
    assert not (run / "checkpoint.pt").exists()
    tally.bad_input("size: --set num_prompts=1000000000 (memory estimate)")


def test_memory_check_arithmetic():
    check_param_memory(1_000, "small", limit=16_000)  # 16 bytes per parameter fits exactly
    with pytest.raises(ConfigError, match="1,001 trainable parameters"):
        check_param_memory(1_001, "small", limit=16_000)


def test_every_rule_refuses_nan_and_infinity():
    for key, rule in TRAIN_RULES.items():
        for value in (float("nan"), float("inf"), float("-inf"), True, "1"):
            assert rule.problem(value), (key, value)


@pytest.mark.parametrize("seeds", [str(2**70), "1,-1", f"42,{2**63 - 1}"])
def test_sweep_seeds_out_of_range_are_refused_before_planning(seeds, cli_err, tally):
    code, out, err = cli_err("sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep", "--plan",
                             "--seeds", seeds)
    assert_clean_error(code, out, err, "--seeds", exit_code=2)
    tally.bad_input(f"option: sweep --seeds {seeds[:24]}")


@pytest.mark.parametrize("command", ["eval", "predict", "explain"])
@pytest.mark.parametrize("device", ["bogus", "cuda:99999"])
def test_bad_device_on_commands_that_load_a_bundle(command, device, cli_err, reference_bundle, tmp_path, tally):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (0, 128, 255)).save(image)
    args = {"eval": ["eval", reference_bundle, "--task", "digits"],
            "predict": ["predict", reference_bundle, image],
            "explain": ["explain", reference_bundle, image, "--out", tmp_path / "maps"]}[command]
    code, out, err = cli_err(*args, "--device", device)
    assert_clean_error(code, out, err, "--device", exit_code=2)
    assert not (tmp_path / "maps").exists() or not any((tmp_path / "maps").iterdir())
    tally.bad_input(f"device: {command} --device {device}")
