"""Hostile streams and environments, through real `lspt` processes (no torch import: fast).

A closed stdout pipe (`lspt list backbones | head -0`) ends quietly with exit 141 (as `cat` killed by
SIGPIPE would); stdout on a full device (/dev/full) is one `Error:` line, exit 1; a closed stdout
is harmless; COLUMNS/LINES of 0, 1, negative, huge or text never make output (or `Error:` lines)
vanish; LSPT_HOME pointing to a file or under a non-directory is one clean `Error:` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import lspt_env

TIMEOUT = 60


def run(home: Path, *args: str, stdout=subprocess.PIPE, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lspt_cli", *args], env=lspt_env(home, **env), stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


OUTPUT_COMMANDS = {
    "list backbones": ["list", "backbones"],
    "list strategies --json": ["list", "strategies", "--json"],
    "list recipes": ["list", "recipes"],
    "paths": ["paths"],
    "paths --json": ["paths", "--json"],
    "plugins": ["plugins"],
    "--help": ["--help"],
    "tune --help": ["tune", "--help"],
    "--version": ["--version"],
}


@pytest.mark.parametrize("name", OUTPUT_COMMANDS)
def test_closed_pipe_is_a_quiet_exit_141(name, tmp_path, tally):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before lspt writes: `lspt ... | head -0`
    try:
        result = run(tmp_path, *OUTPUT_COMMANDS[name], stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == "", result.stderr
    tally.bad_input(f"stdout: closed pipe ({name})")


@pytest.mark.parametrize("name", OUTPUT_COMMANDS)
def test_full_device_is_one_error_line(name, tmp_path, tally):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        result = run(tmp_path, *OUTPUT_COMMANDS[name], stdout=full)
    no_traceback(result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 1 and len(errors) == 1 and "No space left on device" in errors[0], result.stderr
    tally.bad_input(f"stdout: full device ({name})")


@pytest.mark.parametrize("args", [["paths"], ["list", "backbones"], ["list", "bogus"]], ids=" ".join)
def test_closed_stdout_is_harmless(args, tmp_path, tally):
    code = "import os, runpy, sys; os.close(1); sys.argv = ['lspt', *sys.argv[1:]]; runpy.run_module('lspt_cli', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code, *args], env=lspt_env(tmp_path), stderr=subprocess.PIPE,
                            text=True, timeout=TIMEOUT)
    no_traceback(result.stderr)
    assert result.returncode in (0, 1, 2, 141), result.stderr
    if args[-1] == "bogus":
        assert result.returncode == 2 and result.stderr.startswith("Error:")
    tally.bad_input(f"stdout closed before start ({' '.join(args)})")


WIDTHS = ["0", "1", "-5", "abc", "", "99999999999999", "7"]


@pytest.mark.parametrize("columns", WIDTHS)
def test_columns_never_hide_output(columns, tmp_path, tally):
    listed = run(tmp_path, "list", "backbones", COLUMNS=columns, LINES=columns)
    assert listed.returncode == 0 and "vit-tiny" in listed.stdout, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= 4096
    failed = run(tmp_path, "list", "bogus", COLUMNS=columns)
    assert failed.returncode == 2 and failed.stderr.startswith("Error:") and "bogus" in failed.stderr
    helped = run(tmp_path, "tune", "--help", COLUMNS=columns)
    assert helped.returncode == 0 and "--backbone" in helped.stdout
    tally.bad_input(f"COLUMNS={columns!r}: output, Error lines and --help still visible")


def test_json_output_is_unaffected_by_columns(tmp_path, tally):
    result = run(tmp_path, "list", "strategies", "--json", COLUMNS="0")
    assert result.returncode == 0 and {row["name"] for row in json.loads(result.stdout)} >= {"vpt-deep", "lspt"}
    tally.bad_input("COLUMNS=0 with --json")


@pytest.mark.parametrize("kind", ["a regular file", "/dev/null", "below a regular file"])
def test_lspt_home_that_is_not_a_directory(kind, tmp_path, tally):
    plain = tmp_path / "plain-file"
    plain.write_text("not a directory\n")
    home = {"a regular file": str(plain), "/dev/null": "/dev/null", "below a regular file": str(plain / "sub")}[kind]
    env = lspt_env(tmp_path)
    env["LSPT_HOME"] = home
    result = subprocess.run([sys.executable, "-m", "lspt_cli", "prepare-data", "digits"], env=env,
                            capture_output=True, text=True, timeout=120)
    no_traceback(result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode in (1, 2) and len(errors) == 1 and home in errors[0], result.stderr
    assert plain.read_text() == "not a directory\n"  # nothing replaced
    paths = subprocess.run([sys.executable, "-m", "lspt_cli", "paths"], env=env, capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert paths.returncode == 0 and "LSPT_HOME" in paths.stdout
    tally.bad_input(f"LSPT_HOME is {kind}")


def test_lspt_home_that_cannot_be_created(tmp_path, tally):
    if not Path("/proc/1").is_dir():
        pytest.skip("no /proc")
    env = lspt_env(tmp_path)
    env["LSPT_HOME"] = "/proc/1"  # a directory nobody may create anything in
    result = subprocess.run([sys.executable, "-m", "lspt_cli", "prepare-data", "digits"], env=env,
                            capture_output=True, text=True, timeout=120)
    no_traceback(result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode in (1, 2) and len(errors) == 1 and "/proc/1" in errors[0], result.stderr
    tally.bad_input("LSPT_HOME is a directory where nothing can be created (/proc/1)")


def test_stderr_on_a_full_device(tmp_path, tally):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "lspt_cli", "list", "bogus"], env=lspt_env(tmp_path),
                                stdout=subprocess.PIPE, stderr=full, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and result.stdout == ""  # the usage error's code, even with nowhere to say it
    tally.bad_input("stderr: full device")
