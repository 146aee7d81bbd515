"""lspt's own error types: every known failure is one of these, printed as one `Error:` line.

The CLI turns them into a message, an optional hint and an exit code (docs/architecture.md, "Conventions");
anything else is a bug: the CLI's error boundary (lspt_cli/cli/__init__.py) prints it as one
`Error: internal error: <type>: <message>` line (naming the plugin when plugin code raised it) and
`LSPT_DEBUG=1` shows its traceback.
"""

from __future__ import annotations


class LsptError(Exception):
    """A failure lspt understands: shown as `Error: <message>` (+ `Hint: <hint>`), exit code 1."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(LsptError):
    """Bad arguments or configuration: exit code 2, like Click's usage errors."""

    exit_code = 2


class PluginError(LsptError):
    """A plugin failed to load or registered something invalid."""


class BundleError(LsptError):
    """A prompt bundle is unreadable, corrupt, or does not fit the model it is loaded into."""


class DataError(LsptError):
    """A dataset layout, manifest or image is missing or malformed."""


class WeightsError(LsptError):
    """Backbone weights are missing, unsafe, or do not match the model."""


class ConfigError(UsageError):
    """A recipe or option value is malformed (exit code 2)."""


class RunFileError(LsptError):
    """A file lspt wrote and reads back (config.json, checkpoint.pt, metrics.jsonl, summary.json) is
    missing, malformed or does not belong to the run (lspt_cli/schema.py)."""


class TrainingError(LsptError):
    """Training could not continue (e.g. a NaN loss); the last good checkpoint is kept."""


class BelowThreshold(LsptError):
    """`lspt eval --fail-under` was not met: exit code 3."""

    exit_code = 3
