"""What `tune` and `sweep` say about how a run's config came about (issue 23): a `--recipe` written for
another run, a warm-up that never ends, a backbone without a recipe, and the options `--dry-run` shows.
Each is one `Warning:` line (none under -q) or a field, never a silent surprise."""

from __future__ import annotations

import json

import pytest

TUNE = ("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear")


def warnings_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Warning:")]


@pytest.mark.parametrize("command", ["tune", "sweep"])
def test_warm_up_past_the_end_is_a_warning(cli, tmp_path, command, tally):
    args = ("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--dry-run") if command == "tune" \
        else ("sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--grid", "lr=0.1,0.2",
              "--plan", "--out", str(tmp_path / "s"))
    for epochs, warmup, warned in (("5", "10", True), ("5", "5", True), ("5", "4", False), ("1", "0", False)):
        result = cli(*args, "--epochs", epochs, "--warmup-epochs", warmup)
        assert result.exit_code == 0, result.output
        said = [w for w in warnings_of(result) if "--warmup-epochs" in w]
        assert bool(said) is warned and (not warned or f"--warmup-epochs {warmup} is not below --epochs {epochs}" in said[0])
        if warned:
            tally.bad_input(f"{command}: --epochs {epochs} --warmup-epochs {warmup} (lr never leaves warm-up): one warning")


def test_a_recipe_written_for_another_run_is_applied_with_a_warning(cli, tmp_path, tally):
    recipe = tmp_path / "other.toml"
    recipe.write_text('[match]\nbackbone = "mae-vitb"\nstrategy = "vpt-*"\ntask = "digits"\n[train]\nlr = 0.2\n')
    result = cli(*TUNE, "--recipe", str(recipe), "--dry-run", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["train"]["lr"] == 0.2  # applied: the user asked for it
    said = warnings_of(result)
    assert any("backbone = 'mae-vitb' does not match this run's backbone 'vit-tiny'" in w for w in said)
    assert any("strategy = 'vpt-*' does not match this run's strategy 'linear'" in w for w in said)
    assert not any("task =" in w for w in said)  # what matches is not mentioned
    result = cli(*TUNE, "--recipe", str(recipe), "--dry-run", "--json", "-q")
    assert warnings_of(result) == []  # -q: no warnings
    tally.bad_input("tune --recipe FILE whose [match] names another backbone and strategy: one warning each")


def test_a_backbone_without_a_recipe_says_what_it_falls_back_to(cli, tally):
    result = cli("tune", "--backbone", "sup-vitb", "--task", "digits", "--strategy", "vpt-deep", "--dry-run")
    assert result.exit_code == 0
    assert any("no recipe for vpt-deep on sup-vitb" in w and "100 epochs" in w for w in warnings_of(result))
    assert not any("no recipe" in w for w in warnings_of(cli(*TUNE, "--dry-run")))  # vit-tiny has one
    tally.bad_input("tune on a backbone without a recipe: one warning naming the fallbacks")


def test_dry_run_shows_every_resolved_strategy_option(cli, tally):
    doc = json.loads(cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "gapt", "--set",
                         "gate_init=3", "--dry-run", "--json").stdout)
    assert doc["strategy_options"]["gate_init"] == 3  # given
    assert {"num_prompts", "temperature", "dropout"} <= set(doc["strategy_options"])  # and not given
    assert "notes" not in doc
    tally.bad_input("tune --dry-run: every resolved strategy option shown, not only the given ones")
