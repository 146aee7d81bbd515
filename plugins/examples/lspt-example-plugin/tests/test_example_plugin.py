"""The example plugin's own tests, written with lspt_cli.testing (run: python -m pytest)."""

from lspt_cli.testing import run_check


def test_installed_and_registered(lspt_cli):
    rows = {row["distribution"]: row for row in lspt_cli("plugins", "--json").json}
    assert rows["lspt-example-plugin"]["error"] is None
    assert rows["lspt-example-plugin"]["components"] == {"strategy": ["example-bias"], "dataset": ["example-stripes"]}


def test_strategy_conformance(lspt_home):
    run_check("example-bias").assert_ok()


def test_dataset_conformance(lspt_home):
    run_check("example-stripes").assert_ok()


def test_bias_moves_only_patch_tokens(tiny_backbone):
    import torch

    from lspt_example_plugin.strategy import PatchBias

    strategy = PatchBias(tiny_backbone.dims, scale=2.0)
    with torch.no_grad():
        strategy.bias.fill_(1.0)
    x = tiny_backbone.embed(torch.zeros(1, 3, 32, 32))
    out = strategy.before_block(0, x, strategy.start(x))
    assert torch.equal(out[:, :1], x[:, :1]) and torch.allclose(out[:, 1:] - x[:, 1:], torch.full_like(x[:, 1:], 2.0))


def test_bad_scale_is_one_error_line(lspt_cli, fake_task):
    result = lspt_cli("tune", "--backbone", "vit-tiny", "--task", fake_task, "--strategy", "example-bias",
                      "--set", "scale=abc", "--epochs", "1")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "Error: strategy 'example-bias': scale must be a number, got 'abc'"
