"""The hook specifications a plugin may implement (project name "lspt", entry-point group "lspt").

Registration hooks take a `register` callback, the pattern of `llm` and tox: call it once per
component with a spec from `lspt_cli.specs`. Event hooks let trackers observe training runs.
These docstrings are the reference (pytest style: each argument under :param:, what to return);
docs/plugins.md shows every signature (tests check both) and tests/ implements every hook.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("lspt")
hookimpl = pluggy.HookimplMarker("lspt")


@hookspec
def lspt_register_backbones(register):
    """Register the frozen ViT backbones this plugin provides.

    :param register: call ``register(BackboneSpec(name, description, factory, readout, embed_dim, depth,
        num_prefix_tokens))`` once per backbone. ``factory(weights: Path | None) -> FrozenBackbone`` is
        imported and called only when the backbone is used; ``weights=None`` means cached weights or a
        seeded random init, never a silent download. The spec's shapes must match the model
        (``lspt plugins check`` compares them).

    Return nothing: what counts is what was passed to ``register``. A name registered twice, or a spec
    of the wrong type, makes the whole plugin fail to load (a warning, or fatal with LSPT_STRICT_PLUGINS=1).
    """


@hookspec
def lspt_register_strategies(register):
    """Register the prompt strategies this plugin provides.

    :param register: call ``register(StrategySpec(name, description, factory, defaults, count_params,
        paper))`` once per strategy. ``factory(dims: BackboneDims, **options) -> PromptStrategy``;
        ``defaults`` lists every option (any other ``--set`` key is refused before training);
        ``count_params(dims, options) -> int`` counts trainable strategy tensors (head excluded); it runs
        for `lspt list strategies` and before a build, so a torch-free formula keeps those fast (the
        built-ins build their module on the meta device instead).

    Return nothing. The strategy's interface (``start``/``before_block``/``after_block``/
    ``attention_scales``, 0-based block indices, ``start`` returning a dict of state) is in
    docs/plugins.md. ``lspt plugins check NAME`` tests it (gradients, ``count_params``, the bundle
    round-trip, a resume into a fresh instance, every bad option, the seed), and every ``lspt tune``
    ends by checking ``count_params``, the seed and its bundle's reload (an ``Error:`` naming the cause).
    """


@hookspec
def lspt_register_datasets(register):
    """Register the tasks this plugin provides.

    :param register: call ``register(DatasetSpec(name, description, prepare, benchmark, needs_root,
        layout))`` once per task. ``prepare(root: Path | None, out_dir: Path | None = None, **options)
        -> Manifest`` checks the files under ``root`` (None when ``needs_root=False``) and returns the
        class names and the train/val/test/trainval splits; ``lspt prepare-data`` validates and writes it.

    Return nothing. Raise ``lspt_cli.DataError`` (with a hint) for missing or malformed files.
    """


@hookspec
def lspt_register_recipes(register):
    """Register training recipes (hyper-parameters for a strategy x backbone x benchmark [x task]).

    :param register: call ``register(RecipeSpec(name, description, values, strategy, backbone,
        benchmark, task, source))``; ``values`` is the parsed TOML of a recipe file (``[train]``,
        ``[strategy]``, ``[tasks.X]``, ``[grid]``), ``"*"`` in a match field means any.

    Return nothing. The most specific matching recipe is applied below ``--recipe FILE`` and flags.
    """


@hookspec
def lspt_register_loggers(register):
    """Register experiment trackers for ``lspt tune --log NAME`` (docs/tracking.md).

    :param register: call ``register(LoggerSpec(name, description, factory, requires, extra, options))``
        once per logger. ``factory(**options) -> logger``, imported and called only when a run asks for
        it (rank 0 alone); the logger has ``start(run, config, state)`` (returns a dict of state to keep,
        or None), ``log_epoch(epoch, metrics)``, ``finish(summary, bundle)`` and optionally ``close()``
        (``lspt_cli.loggers.LOGGER_METHODS``, the one source of these signatures). ``options`` maps each
        ``--log-opt KEY`` to its help; ``requires`` names the modules it needs and ``extra`` the pip
        extra that installs them: a missing one is one ``Error:`` before training starts.

    Return nothing. A logger whose methods cannot take these calls is refused with one warning when a
    run starts it (``lspt plugins check NAME`` says why); one that raises mid-run is reported once on
    stderr and switched off; the run goes on and its files stay the source of truth.
    """


@hookspec
def lspt_register_executors(register):
    """Register where ``lspt sweep --executor NAME`` runs trials (docs/cluster.md).

    :param register: call ``register(ExecutorSpec(name, description, factory, options, requires, extra))``
        once per executor. ``factory(options, *, workers, sweep_dir, host) -> executor``, imported and
        called only when a sweep picks it; ``executor.run(trials)`` yields ``(trial, outcome, summary,
        error)`` as each trial ends (any order), ``executor.close()`` frees the engine. ``options`` maps
        each ``--executor-opt KEY`` to its help (other keys are a usage error); ``requires``/``extra`` as
        for loggers. Run a trial on a worker with ``lspt_cli.sweep.executors.run_trial(payload(trial))``:
        it claims the trial and runs or resumes it, so selection never depends on the engine.

    Return nothing. The sweep directory must be on a filesystem every worker shares.
    ``lspt plugins check NAME`` runs a two-trial sweep through it and compares it with ``local``.
    """


@hookspec
def lspt_register_commands(app):
    """Add sub-commands to the ``lspt`` command line.

    :param app: the root ``typer.Typer``; use ``@app.command("name")`` (Typer, never raw Click), and
        import heavy modules inside the command so ``lspt --help`` stays fast.

    Return nothing. Raise an ``lspt_cli.LsptError`` subclass for a one-line ``Error:`` and its exit code.
    """


@hookspec
def lspt_on_run_start(run, config):
    """A ``lspt tune`` run starts (also a resumed one), after its config is written.

    :param run: the run: ``run.dir`` (Path of the run directory) and ``run.name`` (its folder name).
    :param config: the resolved config as a dict (what ``config.json`` holds: backbone, strategy,
        task, train, strategy_config, ...).

    Return nothing. An exception only prints a warning: a tracker never stops training.
    """


@hookspec
def lspt_on_epoch_end(run, metrics):
    """An epoch of ``lspt tune`` ended, its record appended to ``metrics.jsonl``.

    :param run: the run (``run.dir``, ``run.name``).
    :param metrics: the record just appended: ``epoch`` (1-based), ``train_loss``, ``train_acc``, ``lr``,
        ``val_loss``/``val_acc``/``best_val_acc`` (not with ``--final``), ``images_per_s``, ``seconds``;
        the first epoch whose steps moved parameters (epoch 1, unless it trained at lr 0) also has
        ``dead_tensors`` (trainable tensors that got no non-zero gradient).

    Return nothing. An exception only prints a warning.
    """


@hookspec
def lspt_on_run_end(run, summary):
    """A ``lspt tune`` run finished: the bundle and ``summary.json`` are written.

    :param run: the run (``run.dir``, ``run.name``).
    :param summary: the document ``lspt tune --json`` prints (test_top1, selected_epoch, bundle, params, ...).

    Return nothing. An exception only prints a warning.
    """
