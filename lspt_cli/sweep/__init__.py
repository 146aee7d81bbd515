"""`lspt sweep`: the VPT protocol as one resumable command.

1. **Grid search** per task: every point of the hyper-parameter grid (lr x weight decay x ... from
   `--grid` flags, else the recipe's `[grid]`), trained on train and selected on val, with the
   *first* seed only (Jia et al. 2022 search with one seed, then re-run the winner).
2. **Selection** per task: the highest val top-1 over the finished grid trials, where a trial's
   val top-1 is the one the protocol's rule names (lspt_cli/selection.py, docs/protocol.md): under
   `paper`, VTAB compares the val top-1 of each trial's *last* epoch (VPT's tune_vtab.py), FGVC the
   best epoch's; under `lspt` the best epoch's everywhere. Ties go to the smaller lr (tune_vtab.py:63-71),
   then the smaller weight decay, then the trial planned first (other grid keys are not ranked).
   Failed trials are ignored (and reported); a `paper` trial whose loss diverged finished on its
   last good epoch and competes, as officially (lspt_cli/selection.py).
3. **Final runs**: the selected point once per seed, as `lspt tune --final` (train+val, except FGVC
   under `paper`: train, test at the best val epoch). `lspt report` averages their test top-1.

Every trial is an ordinary `lspt tune` run directory under the sweep directory
(`<sweep>/<task>/lr0.1-wd0.0001-seed42`, finals `final-lr0.1-wd0.0001-seed44`), and that directory
is the source of truth: a finished trial is skipped, one with a checkpoint resumed, so re-running the
same command (after a crash, a kill, on another node) continues the sweep.

The parts:
- grid.py      parsing, trials and their commands, the selection rule;
- state.py     a trial's state on disk, its claim (a file lock), its record in sweep.json;
- executors.py where trials run: `local` here, engines as plugins (`lspt_register_executors`:
               plugins/executors/ has `slurm` and `ray`);
- driver.py    the Sweep: grid -> selection -> finals through one executor, sweep.json under a lock;
- render.py    sweep.md / sweep.csv and `--plan`.

Nothing here imports the CLI layer, and torch only when a trial runs in-process.
"""

from .driver import Sweep
from .executors import (LocalExecutor, check_executor, open_executor, payload, run_in_process, run_subprocess,
                        run_trial, run_trial_here, subprocess_argv, tune_argv, worker_envs)
from .grid import (DEFAULT_SEEDS, base_config, GRID_ALIASES, SHORT_NAMES, STDERR_TAIL, TRIAL_CONFIG, SweepSpec, Trial,
                   build_final_trials, build_grid_trials, check_grid_keys, expand_tasks, format_value, grid_points,
                   make_trial, ordered_point, parse_grid, parse_seeds, prepared_task_ids, run_state, select_best,
                   select_trial, selection_key, task_dir_name, task_grid, task_rule, trial_name)
from .render import SWEEP_CSV, SWEEP_JSON, SWEEP_MD, plan, point_text, render_csv, render_markdown
from .state import claim, config_mismatch, fill_metrics, read_summary, record_for

__all__ = [name for name in dir() if not name.startswith("_")]
