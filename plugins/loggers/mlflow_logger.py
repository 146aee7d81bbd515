"""The `mlflow` logger: one MLflow run per lspt run, through MLflow's client (no global state).

Where: MLFLOW_TRACKING_URI, else a local store under the data dir (<data dir>/mlruns: mlflow.db and
artifacts/; MLflow refuses its old file store). Which experiment: a sweep's trials (run dirs
SWEEP_DIR/TASK/TRIAL, next to sweep.json) share the experiment `lspt-sweep-<sweep dir name>`; any
other run goes to MLFLOW_EXPERIMENT_NAME, else `lspt`. What: params = the resolved config
flattened (`train.lr`, `strategy_config.num_prompts`, ...), tags strategy/backbone/task/protocol,
every number of each metrics.jsonl record with step = epoch, the test metrics at the end, and the
bundle (with summary.json) as artifacts. The run id is kept in the run dir's loggers.json, so a
resumed run continues the same MLflow run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# A tracking server that is gone must fail fast, not retry for minutes (MLflow's default); the
# user's own settings win. Each request waits at most LSPT_CONNECT_TIMEOUT (30 s), and an http(s)
# server is asked first (check_server) with the same bound.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
TAGS = ("strategy", "backbone", "task", "protocol")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else sqlite under <data dir>/mlruns."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str(local_root() / "mlflow.db")


def local_root() -> Path:
    from lspt_cli import paths

    return paths.data_dir() / "mlruns"


def sweep_dir(run_dir: Path) -> Path | None:
    """The sweep a run belongs to: SWEEP_DIR/TASK/TRIAL with SWEEP_DIR/sweep.json (lspt_cli/sweep/)."""
    candidate = Path(run_dir).resolve().parent.parent
    return candidate if (candidate / "sweep.json").is_file() else None


def experiment_name(run_dir: Path) -> str:
    sweep = sweep_dir(run_dir)
    if sweep is not None:
        return f"lspt-sweep-{sweep.name}"
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or "lspt"


def check_server(uri: str, timeout: float) -> None:
    """An http(s) tracking server must answer (any HTTP response) within `timeout` seconds; else one
    ConnectionError naming the URI and what to check (MLflow's client would retry for minutes)."""
    import socket
    import urllib.error
    import urllib.request

    hint = (f"check MLFLOW_TRACKING_URI and that `mlflow server` runs there; the wait is "
            f"LSPT_CONNECT_TIMEOUT (now {timeout:g} s)")
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:  # it answered (a proxy's 404 or 401 included): MLflow reports the rest
        return
    except (socket.timeout, TimeoutError):
        why = f"did not answer within {timeout:g} s"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            why = f"did not answer within {timeout:g} s"
        else:
            why = f"cannot be reached ({getattr(reason, 'strerror', None) or reason})"
    except (OSError, ValueError) as exc:
        why = f"cannot be reached ({exc})"
    raise ConnectionError(f"the MLflow tracking server at {uri} {why}: {hint}")


def reachable(**options) -> None:
    """Before the run writes anything: an http(s) tracking server must answer within the bounded
    wait, else one Error naming it (a server that goes away later only switches the logger off)."""
    from lspt_cli.errors import LsptError
    from lspt_plugins.executors.options import connect_timeout

    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        check_server(uri, connect_timeout())
    except ConnectionError as exc:
        message, _, hint = str(exc).partition(": check ")
        raise LsptError(f"--log mlflow: {message}", hint=f"check {hint}" if hint else None) from None


class MlflowLogger:
    def start(self, run, config, state):
        from lspt_plugins.executors.options import connect_timeout

        timeout = connect_timeout()
        for key, value in {**HTTP_DEFAULTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": f"{timeout:g}"}.items():
            os.environ.setdefault(key, value)
        uri = state.get("tracking_uri") or tracking_uri()
        if uri.startswith(("http://", "https://")):
            check_server(uri, timeout)
        from mlflow.tracking import MlflowClient

        if uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
            local_root().mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        if state.get("run_id"):  # a resumed run: the same MLflow run, its params already logged
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return {"tracking_uri": uri, "run_id": self.run_id}
        from mlflow.entities import Param

        name = experiment_name(run.dir)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        elif uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_TRACKING_URI"):
            experiment_id = self.client.create_experiment(name, artifact_location=(local_root() / "artifacts" / name).as_uri())
        else:
            experiment_id = self.client.create_experiment(name)
        tags = {key: str(config.get(key)) for key in TAGS}
        tags.update({"lspt.run_dir": str(Path(run.dir).resolve()), "lspt.final": str(bool(config.get("final"))).lower()})
        run_name = f"{Path(run.dir).parent.name}/{run.name}" if sweep_dir(run.dir) else run.name  # task/trial
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        params = [Param(key, value) for key, value in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return {"tracking_uri": uri, "run_id": self.run_id, "experiment": name}

    def log_epoch(self, epoch, metrics):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, epoch) for key, value in metrics.items()
                 if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, summary, bundle):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {key: summary.get(key) for key in ("test_top1", "test_mean_per_class", "test_loss", "val_top1", "selected_epoch")}
        values["trainable_params"] = summary["params"]["trainable"]
        batch = [Metric(key, float(value), now, summary["epochs"]) for key, value in values.items() if value is not None]
        self.client.log_batch(self.run_id, metrics=batch)
        if bundle is not None:
            self.client.log_artifact(self.run_id, str(bundle))
            summary_path = Path(bundle).parent / "summary.json"
            if summary_path.is_file():
                self.client.log_artifact(self.run_id, str(summary_path))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def close(self):
        self.client.set_terminated(self.run_id, status="KILLED")  # `--resume` sets it RUNNING again


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The resolved config as MLflow params: nested keys joined by '.', values as text (JSON for non-strings)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out
