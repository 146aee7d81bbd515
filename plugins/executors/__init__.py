"""The built-in executors of `lspt sweep --executor NAME` (docs/cluster.md).

They register through `lspt_register_executors`, the hook a third-party executor uses too; `slurm`
and `ray` are imported only when a sweep picks them, and their engines are extras.
"""

from lspt_cli import ExecutorSpec, hookimpl
from lspt_cli.specs import ExecutorOption as O


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
            "cluster": O("slurm (default; needs sbatch), or local: submitit's local executor (tests, one machine)",
                         choices=("slurm", "local"), default="slurm"),
            "partition": O("SLURM partition (--partition)"),
            "account": O("SLURM account (--account)"),
            "gpus": O("GPUs per trial", "int", 0, 64, default="0"),
            "cpus": O("CPU cores per trial; also the trial's OMP_NUM_THREADS", "int", 1, 4096, default="1"),
            "mem": O("memory per trial in GB", "float", 0, 1e6, above=True, default="the cluster's"),
            "time": O("time limit per job in minutes; a job that hits it is requeued and resumes", "int", 1, 525600,
                      default="240"),
            "max_requeue": O("requeues per trial after preemption or timeout", "int", 0, 1000, default="3"),
            "connect_timeout": O("seconds to wait for the SLURM controller (sinfo) before giving up", "float", 0, 3600,
                                 above=True, default="LSPT_CONNECT_TIMEOUT or 30"),
        },
        requires=("submitit",),
        extra="slurm",
    ))
    register(ExecutorSpec(
        name="ray",
        description="Each trial a Ray task with its resources; a failed worker's trial is retried.",
        factory="lspt_plugins.executors.ray_executor:RayExecutor",
        options={
            "address": O("cluster to join: auto (a running cluster), or host:port; default: start a local one of "
                         "--workers trials"),
            "num_cpus": O("CPUs per trial; also the trial's OMP_NUM_THREADS", "float", 0, 4096, above=True, default="1"),
            "num_gpus": O("GPUs per trial (fractions share a GPU)", "float", 0, 64, default="0"),
            "max_retries": O("retries of a trial whose worker died", "int", 0, 1000, default="2"),
            "connect_timeout": O("seconds to wait for the cluster at address to answer before giving up", "float", 0,
                                 3600, above=True, default="LSPT_CONNECT_TIMEOUT or 30"),
        },
        requires=("ray",),
        extra="ray",
    ))
