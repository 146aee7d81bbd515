"""N tiny trials on every executor, side by side: engine overhead per trial and scaling with workers.

    python benchmarks/sweep_executors.py --trials 4 --workers 1,2 --out sweep_executors.json

Each run is a real `lspt sweep` driver (a subprocess, as a user runs it) of N grid trials (vit-tiny on
digits, `--epochs E --threads 1 --no-finals`), in a fresh sweep dir, per executor and worker count:
`local`, `ray` (the driver joins a local cluster of k CPUs that this script starts before the run
and stops after it, as `ray start --head` would: a running cluster, whose start is not a per-trial
cost) and `slurm` with `cluster=local` (submitit's local executor). `startup` reports the fixed costs
apart: a trial process's start (importing torch) and each local Ray cluster's start and stop. Reported
per run: the driver's wall time, the trials' own training seconds (summary.json), and

- overhead_per_trial_s: (wall - wall of `local` with the same workers) / N: what the engine adds;
- scaling: wall(k workers) / (wall(1 worker) / k), per executor: 1.0 is perfect, the goal is <= 1.3.

The goal of issue 13 is an engine overhead under 2 s per trial on a local Ray cluster. On a machine
with fewer cores than workers x threads the scaling measures the machine, so the load average before
and after is recorded too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXECUTORS = {
    "local": ["--executor", "local"],
    "ray": ["--executor", "ray"],  # + address= of the cluster started for the run (ray_cluster)
    "slurm": ["--executor", "slurm", "--executor-opt", "cluster=local"],
}


@contextlib.contextmanager
def ray_cluster(cpus: int, costs: dict):
    """A local Ray cluster of `cpus` CPUs for the ray runs; its start and stop times go to `costs`."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    costs[f"ray_cluster_start_s_{cpus}cpu"] = round(time.perf_counter() - start, 2)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        start = time.perf_counter()
        ray.shutdown()
        costs[f"ray_cluster_stop_s_{cpus}cpu"] = round(time.perf_counter() - start, 2)


def one_sweep(executor: str, workers: int, trials: int, epochs: int, root: Path, extra: list[str]) -> dict:
    lrs = ",".join(f"{0.01 * (i + 1):.2f}" for i in range(trials))
    out = root / f"{executor}-w{workers}"
    argv = [sys.executable, "-m", "lspt_cli", "sweep", "--backbone", "vit-tiny", "--strategy", "vpt-shallow",
            "--task", "digits", "--grid", f"lr={lrs}", "--seeds", "42", "--epochs", str(epochs), "--threads", "1",
            "--no-finals", "--workers", str(workers), *EXECUTORS[executor], *extra, "--out", str(out), "--json", "-q"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"executor": executor, "workers": workers, "error": proc.stderr.strip()[-500:]}
    doc = json.loads(proc.stdout)
    seconds = [r["seconds"] for r in doc["trials"]]
    return {"executor": executor, "workers": workers, "trials": len(seconds), "wall_s": round(wall, 2),
            "trial_train_s_mean": round(sum(seconds) / len(seconds), 2), "failed": doc["counts"]["failed"],
            "selection": doc["selections"]["digits"]["point"]}


def startup_costs() -> dict:
    """What a trial process's start costs (importing torch): paid per trial by `local --workers k>1` and
    `slurm`, once per worker process by `ray` (its workers run trial after trial), never by `local`
    with one worker (it trains in the driver)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lspt_cli.engine.train"], check=True)
    return {"tune_process_start_s": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2,4")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--executors", default="local,ray,slurm")
    parser.add_argument("--out", type=Path, default=Path("sweep_executors.json"))
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    executors = args.executors.split(",")
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env_home = Path(tmp) / "home"
        os.environ["LSPT_HOME"] = str(env_home)  # digits prepared once, shared by every run
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        subprocess.run([sys.executable, "-m", "lspt_cli", "prepare-data", "digits"], capture_output=True)
        costs = startup_costs()
        for k in workers:
            for name in executors:
                if name == "ray":
                    with ray_cluster(k, costs) as address:
                        rows.append(one_sweep(name, k, args.trials, args.epochs, Path(tmp),
                                              ["--executor-opt", f"address={address}"]))
                else:
                    rows.append(one_sweep(name, k, args.trials, args.epochs, Path(tmp), []))
                print(json.dumps(rows[-1]), file=sys.stderr)
    wall = {(r["executor"], r["workers"]): r.get("wall_s") for r in rows}
    for r in rows:
        local = wall.get(("local", r["workers"]))
        if r.get("wall_s") is not None and local is not None:
            r["overhead_per_trial_s"] = round((r["wall_s"] - local) / args.trials, 2)
        one = wall.get((r["executor"], 1))
        if r.get("wall_s") is not None and one:
            r["scaling"] = round(r["wall_s"] / (one / r["workers"]), 2)
    doc = {"trials": args.trials, "epochs": args.epochs, "cpu_count": os.cpu_count(),
           "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "startup": costs, "runs": rows}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
