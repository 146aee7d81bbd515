# lspt's test helpers: the lspt_home, tiny_backbone, fake_task and lspt_cli fixtures
pytest_plugins = ["lspt_cli.testing"]
