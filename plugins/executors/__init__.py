"""The built-in executors of `lspt sweep --executor NAME` (docs/cluster.md).

They register through `lspt_register_executors`, the hook a third-party executor uses too; `slurm`
and `ray` are imported only when a sweep picks them, and their engines are extras.
"""

from lspt_cli import ExecutorSpec, hookimpl


@hookimpl
def lspt_register_executors(register):
    register(ExecutorSpec(
        name="local",
        description="This machine: one trial in-process, or --workers subprocess slots (GPUs round-robin).",
        factory="lspt_cli.sweep.executors:LocalExecutor",
    ))
    register(ExecutorSpec(
        name="slurm",
        description="SLURM job arrays through submitit; preempted/timed-out jobs requeue and resume their checkpoint.",
        factory="lspt_plugins.executors.slurm:SlurmExecutor",
        options={
            "cluster": "slurm (default: auto-detect), or local: submitit's local executor (tests, one machine)",
            "partition": "SLURM partition (--partition)",
            "account": "SLURM account (--account)",
            "gpus": "GPUs per trial (default 0)",
            "cpus": "CPU cores per trial (default 1; also the trial's OMP_NUM_THREADS)",
            "mem": "memory per trial in GB (default: the cluster's)",
            "time": "time limit per job in minutes (default 240); a job that hits it is requeued and resumes",
            "max_requeue": "requeues per trial after preemption or timeout (default 3)",
        },
        requires=("submitit",),
        extra="slurm",
    ))
    register(ExecutorSpec(
        name="ray",
        description="Each trial a Ray task with its resources; a failed worker's trial is retried.",
        factory="lspt_plugins.executors.ray_executor:RayExecutor",
        options={
            "address": "cluster to join: auto (a running cluster), or host:port; default: start a local one of --workers trials",
            "num_cpus": "CPUs per trial (default 1; also the trial's OMP_NUM_THREADS)",
            "num_gpus": "GPUs per trial (default 0; fractions share a GPU)",
            "max_retries": "retries of a trial whose worker died (default 2)",
        },
        requires=("ray",),
        extra="ray",
    ))
