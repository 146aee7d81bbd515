"""lspt: visual prompt tuning (VPT, GaPT, LSPT) for frozen self-supervised ViTs.

Plugins import `hookimpl`, the spec classes and the error classes from here; this module never
imports torch. Raise `UsageError`/`ConfigError` (bad option), `DataError` (bad data) or another
`LsptError` for a clean one-line `Error:` instead of a traceback (docs/plugins.md).
"""

from .errors import BundleError, ConfigError, DataError, LsptError, PluginError, TrainingError, UsageError, WeightsError
from .hookspecs import hookimpl
from .specs import BackboneSpec, DatasetSpec, ExecutorSpec, LoggerSpec, RecipeSpec, StrategySpec

__version__ = "0.1.0"
__all__ = [
    "hookimpl", "BackboneSpec", "DatasetSpec", "ExecutorSpec", "LoggerSpec", "RecipeSpec", "StrategySpec", "__version__",
    "LsptError", "UsageError", "ConfigError", "DataError", "PluginError", "BundleError", "WeightsError", "TrainingError",
]
