"""The docs (README.md and the mkdocs site in docs/): every command they show works, and the site builds.

Every `lspt ...` line in a bash block of README.md and docs/*.md (also `torchrun ... -m lspt_cli ...`)
is either run, in document order, in one temporary directory with its own LSPT_HOME (the cheap ones:
`--help`, `list`, `paths`, `inspect`, `--dry-run`, vit-tiny on digits), or, when it needs what a test
machine has not (real ViT-B weights, CUB or VTAB on disk, a cluster, a tracking server), checked
against lspt's own command-line parser: the command exists, every option it uses exists, and option
values of a fixed kind (a choice, a number) are valid. Every command must be classified below: a new
command in the docs that fits no rule fails `test_every_docs_command_is_classified`.
`mkdocs build --strict` must pass (broken links and anchors, pages missing from the nav).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lspt_cli.testing import run_cli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
pytestmark = pytest.mark.xdist_group("docs")  # the run commands build on each other, in document order

# -- what is run and what is only parsed ----------------------------------------------------------------
# (pattern on the command line after `lspt`, reason). First match wins; PARSE_ONLY is tried first.
PARSE_ONLY = [
    (r"\bmae-vitb\b|mae_pretrain_vit_base", "needs MAE's ViT-B/16 weights (mae_pretrain_vit_base.pth) and hours of training"),
    (r"\bcub\b|CUB_200_2011", "needs CUB-200-2011 on disk"),
    (r"\bvtab\b", "needs VTAB-1k on disk"),
    (r"--root ~/photos", "needs your own images"),
    (r"--executor (slurm|ray)", "needs a SLURM or Ray cluster (tests/test_executors.py runs both on local clusters)"),
    (r"--log mlflow", "needs an MLflow tracking server (tests/test_loggers.py starts one)"),
    (r"^plugins check( |$)", "checks an installed external plugin (tests/test_plugin_kit.py installs and checks one)"),
    (r"--strategy my-prompts", "needs the plugin `lspt plugins new` writes, installed (tests/test_plugin_kit.py)"),
    (r"^sweep \.\.\. ", "`...` stands for the options of the sweep shown above it"),
    (r"^explain sweep-digits/", "needs the 10-epoch digits sweep's final bundle and a digit image (tests/test_explain.py)"),
    (r"^serve\b", "starts a server that runs until it is stopped"),
]
RUN = [
    (r"(^| )--help$|^(list|paths|inspect|report)\b", "cheap"),
    (r"^prepare-data digits$", "the offline demo task"),
    (r"^plugins new ", "writes a plugin package into the current directory"),
    (r"^tune .*--dry-run", "resolves the config, trains nothing"),
    (r"^tune (?=.*--backbone vit-tiny)(?=.*--task digits)", "vit-tiny on digits; one epoch unless the line gives --epochs "
     "(the quickstart's full 25 epochs: tests/test_tune_e2e.py::test_quickstart_learns_digits_far_above_chance)"),
    (r"^sweep (?=.*--backbone vit-tiny)(?=.*--task digits)", "run with --plan: the trials are planned, none trains "
     "(sweeps run for real in tests/test_sweep.py)"),
    (r"^(eval|export) digits-run\b", "the run the docs' tour trains just before"),
]


@dataclass(frozen=True)
class DocCommand:
    where: str  # README.md:12
    argv: tuple[str, ...]  # after `lspt` (or `-m lspt_cli`)
    env: tuple[tuple[str, str], ...]  # VAR=value in front of it

    @property
    def text(self) -> str:
        return " ".join(self.argv)

    def rule(self) -> tuple[str, str] | None:
        for kind, rules in (("parse", PARSE_ONLY), ("run", RUN)):
            for pattern, reason in rules:
                if re.search(pattern, self.text):
                    return kind, reason
        return None


def _segments(tokens: list[str]):
    segment: list[str] = []
    for token in tokens + [";"]:
        if token in ("&&", "||", "|", ";", "&"):
            if segment:
                yield segment
            segment = []
        else:
            segment.append(token)


def doc_commands() -> list[DocCommand]:
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        name = path.relative_to(ROOT).as_posix()
        for block in re.finditer(r"^```(?:bash|sh|shell|console)\n(.*?)^```", text, re.S | re.M):
            first = text[: block.start(1)].count("\n") + 1
            lines = block.group(1).split("\n")
            i = 0
            while i < len(lines):
                number, line = first + i, lines[i]
                while line.endswith("\\") and i + 1 < len(lines):  # continuation lines
                    i += 1
                    line = line[:-1] + " " + lines[i]
                i += 1
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True  # comments (#) are dropped
                for segment in _segments(list(lexer)):
                    env = []
                    while segment and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", segment[0]):
                        env.append(tuple(segment.pop(0).split("=", 1)))
                    if segment[:1] == ["lspt"]:
                        argv = segment[1:]
                    elif "lspt_cli" in segment and segment[segment.index("lspt_cli") - 1] == "-m":
                        argv = segment[segment.index("lspt_cli") + 1:]  # torchrun ... -m lspt_cli tune ...
                    else:
                        continue
                    found.append(DocCommand(f"{name}:{number}", tuple(argv), tuple(env)))
    return found


COMMANDS = doc_commands()


# -- the parser check ---------------------------------------------------------------------------------------
def _root_command():
    import typer

    from lspt_cli.cli import create_app

    return typer.main.get_command(create_app())


def check_against_parser(argv: list[str]) -> None:
    """The command and every option exist (lspt's parser reads the line with --help appended), and the
    leaf command's parser accepts the line: option values are converted and checked (a choice, a number),
    required arguments are there (unless the line elides them with `...`). Nothing is invoked."""
    args = [a for a in argv if a != "..."]
    root = _root_command()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = root.main(args=[*args, "--help"], prog_name="lspt", standalone_mode=False)  # UsageError if unknown
    assert code in (0, None), out.getvalue()
    command, rest, path = root, list(args), []
    while hasattr(command, "commands"):  # down to the leaf command (the docs give no root options)
        name = next((a for a in rest if not a.startswith("-")), None)
        if name is None:  # `lspt --help`
            return
        rest = rest[rest.index(name) + 1:]
        command = command.commands[name]
        path.append(name)
    try:
        command.make_context(" ".join(["lspt", *path]), rest)  # converts every value; raises BadParameter
    except Exception as exc:
        if not ("..." in argv and type(exc).__name__ == "MissingParameter"):
            raise


# -- tests --------------------------------------------------------------------------------------------------
def test_the_docs_show_commands():
    kinds = [c.rule()[0] for c in COMMANDS if c.rule()]
    assert len(COMMANDS) >= 40 and kinds.count("run") >= 10 and kinds.count("parse") >= 20, (len(COMMANDS), kinds)
    readme = [c.text for c in COMMANDS if c.where.startswith("README.md:")]
    assert "tune --backbone vit-tiny --task digits" in readme  # the first set-up command


def test_every_docs_command_is_classified():
    loose = [f"{c.where}: lspt {c.text}" for c in COMMANDS if c.rule() is None]
    assert not loose, "add these to RUN or PARSE_ONLY in tests/test_docs.py:\n" + "\n".join(loose)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One directory for the commands that run, in document order: `digits-run` of the tour is used by the
    commands after it, as a reader would use it."""
    return tmp_path_factory.mktemp("docs-workspace")


def runnable_argv(command: DocCommand) -> list[str]:
    argv = list(command.argv)
    if argv[0] == "tune" and "--dry-run" not in argv and "--epochs" not in argv:
        argv += ["--epochs", "1"]
    if argv[0] == "sweep":
        argv += ["--plan"]
    return argv


def producer(command: DocCommand) -> DocCommand | None:
    """The earlier docs command whose `--out DIR` this one reads (`lspt inspect digits-run/...`)."""
    firsts = {Path(a).parts[0] for a in command.argv if not a.startswith("-") and Path(a).parts}
    for other in COMMANDS[: COMMANDS.index(command)]:
        argv = other.argv
        if other.rule() and other.rule()[0] == "run" and "--out" in argv and argv[argv.index("--out") + 1] in firsts:
            return other
    return None


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} {c.text[:60]}" for c in COMMANDS])
def test_docs_command(command, workspace, monkeypatch, tmp_path):
    rule = command.rule()
    if rule is None:
        pytest.fail("unclassified: see test_every_docs_command_is_classified")
    kind, _ = rule
    argv = runnable_argv(command) if kind == "run" else list(command.argv)
    check_against_parser(argv)
    if kind == "parse":
        return
    monkeypatch.setenv("LSPT_HOME", str(workspace / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path if argv[:2] == ["plugins", "new"] else workspace)
    source = producer(command)
    if source is not None and not (workspace / source.argv[source.argv.index("--out") + 1]).exists():
        assert run_cli(*runnable_argv(source)).exit_code == 0  # run alone (-k): make what it reads first
    result = run_cli(*argv, env=dict(command.env) or None)
    assert result.exit_code == 0, f"{command.where}: lspt {' '.join(argv)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    if "--dry-run" in argv:
        assert '"lr_trained"' in result.stdout
    if argv[0] == "sweep":  # --plan: one `lspt tune` line per grid trial
        grid = [g for g in argv[argv.index("--grid") + 1].split("=")[1].split(",")] if "--grid" in argv else []
        assert sum(line.startswith("lspt tune") for line in result.stdout.splitlines()) == max(1, len(grid))


def test_parser_check_catches_what_it_should():
    check_against_parser(["tune", "--backbone", "mae-vitb", "--task", "cub", "--epochs", "3"])
    check_against_parser(["sweep", "...", "--executor", "ray", "--workers", "4"])
    for bad in (["tune", "--epoch", "3"], ["tunes", "--backbone", "x"], ["tune", "--epochs", "three"],
                ["report", "runs", "--format", "xml"], ["plugins", "new", "x", "--kinds", "strategy"]):
        with pytest.raises(Exception):
            check_against_parser(bad)


def test_readme_fits_on_a_few_screens_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    assert [h for h in re.findall(r"^## (.+)$", readme, re.M)] == ["Set up", "Python API", "Documentation"]
    nav = re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert set(nav) == pages  # every page in the nav, every nav entry a page
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert linked <= pages
    assert pages - linked <= {"index.md", "sample-report.md"}, pages - linked


def test_the_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    home = (site / "index.html").read_text()
    assert "The main job:" in home  # the README's quickstart, included into the home page
    assert (site / "architecture" / "index.html").exists() and (site / "protocol" / "index.html").exists()
