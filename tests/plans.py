"""Reading `lspt sweep --plan` output in tests: each line is `lspt tune --config FILE --out DIR`,
and FILE holds the trial's resolved config (config.json's schema)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path


def planned_trials(stdout: str) -> list[dict]:
    """The resolved config of every planned trial, in plan order (each with its `out` dir added)."""
    trials = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        argv = shlex.split(line)
        assert argv[1:3] == ["tune", "--config"] and argv[4] == "--out" and len(argv) == 6, line
        config = json.loads(Path(argv[3]).read_text())
        trials.append({**config, "out": argv[5]})
    return trials
