"""Experiment tracking (README "Tracking", issue 15): `--log tensorboard,mlflow` and third-party loggers.

Everything here is checked against the run's own files (metrics.jsonl, summary.json, the bundle),
read back through the trackers' own readers: TensorBoard's EventAccumulator and MLflow's client
talking to a real `mlflow server` (sqlite backend, loopback, a free port) started by the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from plans import planned_trials

from lspt_cli import LoggerSpec, hookimpl

TUNE = ("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-shallow", "--set", "num_prompts=2",
        "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "64", "--seed", "3", "-q")
# metrics.jsonl key -> TensorBoard tag (the names README "Tracking" documents)
TB_TAGS = {"train_loss": "train/loss", "train_acc": "train/acc", "val_loss": "val/loss", "val_acc": "val/acc",
           "val_mean_per_class": "val/mean_per_class", "lr": "lr", "images_per_s": "speed/images_per_s"}


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def bundle_content(run_dir: Path):
    """The bundle's tensors and its metadata without the creation time."""
    from safetensors import safe_open

    with safe_open(str(run_dir / "bundle.safetensors"), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("lspt.created_at")
    return tensors, meta


def same_bundle(a: Path, b: Path) -> bool:
    import torch

    (ta, ma), (tb, mb) = bundle_content(a), bundle_content(b)
    return ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# -- a third-party logger, registered through the same hook as the built-ins -----------------------
class Recorder:
    def __init__(self, plugin):
        self.plugin = plugin

    def start(self, run, config, state):
        self.plugin.calls.append(("start", dict(state), config["train"]["loggers"]))
        return {"starts": state.get("starts", 0) + 1}

    def log_epoch(self, epoch, metrics):
        if epoch == self.plugin.fail_at:
            self.plugin.fail_at = None
            raise OSError(28, "No space left on device")
        self.plugin.calls.append(("epoch", epoch, metrics["train_loss"]))

    def finish(self, summary, bundle):
        self.plugin.calls.append(("finish", summary["test_top1"], bundle))


class RecorderPlugin:
    def __init__(self, fail_at=None, interrupt_after=None):
        self.calls: list[tuple] = []
        self.fail_at, self.interrupt_after = fail_at, interrupt_after

    @hookimpl
    def lspt_register_loggers(self, register):
        register(LoggerSpec(name="recorder", description="records what it is told", factory=lambda: Recorder(self)))

    @hookimpl
    def lspt_on_epoch_end(self, run, metrics):
        if metrics["epoch"] == self.interrupt_after:  # Ctrl-C: the trainer checkpoints and exits 130
            self.interrupt_after = None
            os.kill(os.getpid(), signal.SIGINT)


def add_recorder(**kwargs) -> RecorderPlugin:
    from lspt_cli.plugins import get_host

    plugin = RecorderPlugin(**kwargs)
    get_host().add_plugin(plugin, "test-recorder")
    return plugin


# -- registry, flag, recipe key, sweep pass-through, errors ----------------------------------------
def test_builtin_loggers_are_listed_with_their_extras(cli):
    result = cli("list", "loggers", "--json")
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert {"tensorboard", "mlflow"} <= set(rows)
    assert rows["tensorboard"]["extra"] == "tensorboard" and rows["mlflow"]["extra"] == "mlflow"
    assert rows["tensorboard"]["plugin"] == rows["mlflow"]["plugin"] == "loggers"
    from lspt_cli.plugins import get_host

    record = get_host().records["loggers"]  # through the `lspt` entry-point group, like a third-party plugin
    assert record.builtin and record.dist == "lspt" and record.components == {"logger": ["tensorboard", "mlflow"]}


def test_log_flag_and_recipe_key_reach_the_run_config(cli, tmp_path):
    result = cli(*TUNE, "--log", "tensorboard, mlflow", "--dry-run")
    assert json.loads(result.output)["train"]["loggers"] == "tensorboard, mlflow"
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nloggers = "tensorboard"\n')
    result = cli(*TUNE, "--recipe", str(recipe), "--dry-run")
    assert json.loads(result.output)["train"]["loggers"] == "tensorboard"


def test_sweep_passes_log_to_every_trial(cli, tmp_path):
    result = cli("sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--grid", "lr=0.05,0.1",
                 "--seeds", "42", "--no-finals", "--epochs", "1", "--log", "tensorboard", "--out", str(tmp_path / "s"), "--plan")
    trials = planned_trials(result.stdout)
    assert len(trials) == 2 and all(t["train"]["loggers"] == "tensorboard" for t in trials)


def test_unknown_logger_and_malformed_names_are_one_error(cli, tmp_path):
    result = cli(*TUNE, "--log", "tensorbored", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "unknown logger 'tensorbored'" in result.output and "tensorboard" in result.output
    result = cli(*TUNE, "--log", "a;b", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2 and "--loggers: must be logger names separated by commas" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["mlflow", "tensorboard"])
def test_missing_extra_is_one_error_naming_it_before_training(cli, tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # `import mlflow` now fails as if not installed
    result = cli(*TUNE, "--log", name, "--out", str(tmp_path / "run"))
    assert result.exit_code != 0
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and f"'{name}'" in error_lines[0]
    assert f"pip install 'lspt[{name}]'" in result.output
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    sweep = cli("sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--grid", "lr=0.1",
                "--seeds", "42", "--epochs", "1", "--log", name, "--out", str(tmp_path / "sweep"))
    assert sweep.exit_code != 0 and f"pip install 'lspt[{name}]'" in sweep.output
    assert not (tmp_path / "sweep").exists()  # refused before any trial
    rows = {row["name"]: row for row in json.loads(cli("list", "loggers", "--json").output)}
    assert rows[name]["installed"] is False


# -- failure isolation and resume ------------------------------------------------------------------
@pytest.mark.slow
def test_failing_logger_warns_once_and_leaves_the_run_untouched(cli, tmp_path):
    plain = tmp_path / "plain"
    assert cli(*TUNE, "--epochs", "3", "--out", str(plain)).exit_code == 0
    plugin = add_recorder(fail_at=2)  # "disk full" in epoch 2
    logged = tmp_path / "logged"
    result = cli(*TUNE, "--epochs", "3", "--log", "recorder", "--out", str(logged))
    assert result.exit_code == 0, result.output
    assert result.output.count("logger 'recorder' failed") == 1
    assert "No space left on device" in result.output
    assert [c[0] for c in plugin.calls] == ["start", "epoch"]  # switched off after the failure: no finish
    assert plugin.calls[1] == ("epoch", 1, metrics_of(logged)[0]["train_loss"])
    assert same_bundle(plain, logged)
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]
    assert strip(metrics_of(plain)) == strip(metrics_of(logged))


@pytest.mark.slow
def test_resume_logs_every_epoch_exactly_once(cli, tmp_path):
    plugin = add_recorder(interrupt_after=2)
    run = tmp_path / "run"
    result = cli(*TUNE, "--epochs", "3", "--log", "recorder", "--out", str(run))
    assert result.exit_code == 130, result.output
    assert plugin.calls[0] == ("start", {}, "recorder")
    assert [c[:2] for c in plugin.calls[1:]] == [("epoch", 1), ("epoch", 2)]
    plugin.calls.clear()
    result = cli("tune", "--resume", str(run), "-q")
    assert result.exit_code == 0, result.output
    assert plugin.calls[0] == ("start", {"starts": 1}, "recorder")  # the state its first start returned
    assert [c[:2] for c in plugin.calls[1:-1]] == [("epoch", 3)]  # 1 and 2 were logged before the Ctrl-C
    summary = json.loads((run / "summary.json").read_text())
    assert plugin.calls[-1] == ("finish", summary["test_top1"], run / "bundle.safetensors")


@pytest.mark.slow
def test_resume_logs_the_epochs_a_failed_logger_missed(cli, tmp_path):
    plugin = add_recorder(fail_at=1, interrupt_after=2)
    run = tmp_path / "run"
    assert cli(*TUNE, "--epochs", "3", "--log", "recorder", "--out", str(run)).exit_code == 130
    assert [c[0] for c in plugin.calls] == ["start"]
    plugin.calls.clear()
    assert cli("tune", "--resume", str(run), "-q").exit_code == 0
    records = metrics_of(run)
    assert [c for c in plugin.calls if c[0] == "epoch"] == [("epoch", r["epoch"], r["train_loss"]) for r in records]
    assert plugin.calls[-1][0] == "finish"


# -- TensorBoard, read back with TensorBoard's own reader -------------------------------------------
@pytest.mark.slow
def test_tensorboard_event_files_hold_every_epoch_scalar(cli, tmp_path):
    pytest.importorskip("tensorboard")  # in the `dev` extra: CI runs this for real
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    result = cli(*TUNE, "--log", "tensorboard", "--out", str(run))
    assert result.exit_code == 0, result.output
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    records = metrics_of(run)
    assert len(records) == 2
    for key, tag in TB_TAGS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [r["epoch"] for r in records], tag
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6), tag
    summary = json.loads((run / "summary.json").read_text())
    assert acc.Scalars("hparam/test_top1")[-1].value == pytest.approx(summary["test_top1"], rel=1e-6)
    assert acc.Scalars("hparam/trainable_params")[-1].value == summary["params"]["trainable"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    written = json.loads((run / "config.json").read_text())
    resolved = {k: v for k, v in written.items() if k not in ("meta", "params")}  # config.json adds these two
    assert json.loads(text.strip().strip("`")) == resolved
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(json.loads((run / "config.json").read_text())["train"]["lr"])
    assert start.hparams["strategy"].string_value == "vpt-shallow"
    assert start.hparams["trainable_params"].number_value == summary["params"]["trainable"]


# -- MLflow, against a real tracking server ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on loopback (sqlite backend, artifacts in a temp dir), started by the test."""

    def __init__(self, root: Path):
        self.root, self.proc = root, None
        self.url = f"http://127.0.0.1:{_free_port()}"

    def ensure(self) -> "MlflowServer":
        """Start it if it is not running (the server-loss test kills it; the store survives)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.root / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                 f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", str(self.root / "artifacts"),
                 "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1], "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    pytest.fail(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the server and its workers
        if self.proc is not None:
            self.proc.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture
def tracking(mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    mlflow_server.ensure()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    return MlflowClient(tracking_uri=mlflow_server.url)


def _check_mlflow_run(client, mlflow_run, run_dir: Path, tmp_path: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    data = mlflow_run.data
    assert data.params["train.lr"] == json.dumps(config["train"]["lr"])
    assert data.params["train.epochs"] == "2" and data.params["backbone"] == "vit-tiny"
    assert data.params["strategy_config.num_prompts"] == "2"
    assert {k: data.tags[k] for k in ("strategy", "backbone", "task", "protocol")} == {
        "strategy": "vpt-shallow", "backbone": "vit-tiny", "task": "digits", "protocol": config["protocol"]}
    records = metrics_of(run_dir)
    for key in ("train_loss", "train_acc", "val_acc", "val_loss", "lr"):
        history = sorted(client.get_metric_history(mlflow_run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [r["epoch"] for r in records], key
        assert [m.value for m in history] == pytest.approx([r[key] for r in records], rel=1e-12), key
    summary = json.loads((run_dir / "summary.json").read_text())
    assert data.metrics["test_top1"] == pytest.approx(summary["test_top1"])
    assert mlflow_run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(mlflow_run.info.run_id)} >= {"bundle.safetensors", "summary.json"}
    local = client.download_artifacts(mlflow_run.info.run_id, "bundle.safetensors", str(tmp_path))
    assert Path(local).read_bytes() == (run_dir / "bundle.safetensors").read_bytes()


@pytest.mark.slow
@pytest.mark.xdist_group("mlflow-server")  # `pytest -n`: one server for the three
def test_mlflow_tune_logs_params_metrics_tags_and_bundle(cli, tmp_path, tracking):
    run = tmp_path / "run"
    result = cli(*TUNE, "--log", "mlflow", "--out", str(run))
    assert result.exit_code == 0, result.output
    assert "failed" not in result.output
    state = json.loads((run / "loggers.json").read_text())["mlflow"]
    mlflow_run = tracking.get_run(state["state"]["run_id"])
    assert tracking.get_experiment(mlflow_run.info.experiment_id).name == "lspt"
    assert mlflow_run.info.run_name == "run"
    _check_mlflow_run(tracking, mlflow_run, run, tmp_path)


@pytest.mark.slow
@pytest.mark.xdist_group("mlflow-server")  # `pytest -n`: one server for the three
def test_mlflow_sweep_is_one_experiment_with_a_run_per_trial(cli, tmp_path, tracking):
    sweep = tmp_path / "sw-digits"
    result = cli("sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-shallow", "--set", "num_prompts=2",
                 "--grid", "lr=0.05,0.1", "--seeds", "3", "--no-finals", "--epochs", "2", "--warmup-epochs", "1",
                 "--batch-size", "64", "--log", "mlflow", "--out", str(sweep), "-q")
    assert result.exit_code == 0, result.output
    experiment = tracking.get_experiment_by_name("lspt-sweep-sw-digits")
    assert experiment is not None
    runs = tracking.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.05", "0.1"]
    trial_dirs = {Path(r.data.tags["lspt.run_dir"]) for r in runs}
    assert trial_dirs == {p.parent for p in sweep.glob("*/*/summary.json")}
    for mlflow_run in runs:
        _check_mlflow_run(tracking, mlflow_run, Path(mlflow_run.data.tags["lspt.run_dir"]), tmp_path / mlflow_run.info.run_id)


# Under torchrun rank 0 alone logs: tests/test_distributed.py::test_torchrun_two_ranks checks it in the
# same two-rank run that checks the sharding (one torchrun launch instead of two).


@pytest.mark.slow
def test_mlflow_without_a_tracking_uri_uses_a_local_store_under_the_data_dir(cli, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from lspt_cli import paths

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    run = tmp_path / "run"
    result = cli(*TUNE, "--log", "mlflow", "--out", str(run))
    assert result.exit_code == 0, result.output
    store = paths.data_dir() / "mlruns"
    assert (store / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lspt").experiment_id])
    assert len(runs) == 1
    _check_mlflow_run(client, runs[0], run, tmp_path / "download")
    assert list((store / "artifacts").rglob("bundle.safetensors"))  # artifacts stay under the data dir too


class ServerKiller:
    def __init__(self, proc):
        self.proc = proc

    @hookimpl
    def lspt_on_epoch_end(self, run, metrics):
        if metrics["epoch"] == 1 and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.mark.slow
@pytest.mark.xdist_group("mlflow-server")  # `pytest -n`: one server for the three
def test_mlflow_server_gone_mid_run_warns_once_and_the_bundle_is_unchanged(cli, tmp_path, tracking, mlflow_server):
    """Kills the module's server after epoch 1 (a later test's `tracking` starts it again)."""
    from lspt_cli.plugins import get_host

    plain = tmp_path / "plain"
    assert cli(*TUNE, "--out", str(plain)).exit_code == 0
    get_host().add_plugin(ServerKiller(mlflow_server.proc), "test-server-killer")
    run = tmp_path / "run"
    result = cli(*TUNE, "--log", "mlflow", "--out", str(run))
    assert mlflow_server.proc.poll() is not None  # the server really went away during the run
    assert result.exit_code == 0, result.output
    assert result.output.count("logger 'mlflow' failed") == 1
    assert (run / "summary.json").is_file()
    assert same_bundle(plain, run)
