"""Mutation testing: do the tests notice when the code is wrong?

    python benchmarks/mutation.py                        # every target below, JSON on stdout
    python benchmarks/mutation.py --module lspt_cli/engine/evaluate.py --list   # show the mutants
    python benchmarks/mutation.py --module plugins/strategies/gapt.py --timeout 120
    python benchmarks/mutation.py --jobs 2 --timeout 60         # every target, two modules at a time

Each mutant is one small change of the source (found with `ast`, applied to the source text):
a comparison flipped (< <=, == !=, in / not in, is / is not), an arithmetic operator swapped
(+ -, * /), a constant changed (0 <-> 1, n -> n + 1, x -> 2x, True <-> False), `and` <-> `or`,
a `not` dropped, a call statement deleted (e.g. `optimizer.step()`), or a function made to return
early. A mutant is *killed* when the module's tests fail, *survives* when they pass, and times out
past `--timeout` seconds (listed apart and not counted as killed: the score is killed / mutants).
Mutants checked by hand to be equivalent (EQUIVALENT, each with its reason) are reported, not run
(`--run-equivalent` runs them), and count as not killed.

The shared working tree is never touched: the committed tree (`git archive HEAD`, or the working
tree's files with --worktree) is copied to a temporary directory, the mutant is written there, and
the tests run there. lspt is installed editable (a meta-path finder maps lspt_cli, lspt_plugins and
lspt_recipes to /work/main); a `sitecustomize.py` in the copy, on PYTHONPATH, points that finder at
the copy, so subprocesses (torchrun, CLI runs) import the mutant too; the run checks it does.

Speed (one CPU process, so it fits a 2-core machine shared with others): a fork server imports
torch, timm, torchvision and pytest once; every mutant runs `pytest -x` in a forked child that
imports lspt fresh from the copy (no .pyc: PYTHONDONTWRITEBYTECODE). A first run of the module's
tests records (sys.settrace, this file only) which test executes which line; each mutant then runs
only the tests that execute its lines, with -x, so most mutants die in seconds. A mutant on a line no
test executes survives without a run (reported as such).

Why not mutmut: it has no notion of the package-dir mapping of this editable install, mutates a
tree it lays out itself, and re-imports torch for every mutant (minutes per module on this machine);
the operators above are the ones that matter here and take ~200 lines.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOOP_TESTS = ["tests/test_train_protocol_details.py", "tests/test_trainer.py"] + [
    f"tests/test_protocol.py::{t}" for t in (
        "test_per_epoch_factor_is_the_official_lambdalr", "test_rank_batch_splits_like_vpt",
        "test_trainer_splits_the_batch_over_ranks", "test_paper_is_fp32_on_every_device",
        "test_trainer_builds_the_protocols_head")]
# module (path in the repo, optionally ::function,function) -> the tests that guard it, in order.
TARGETS: dict[str, list[str]] = {
    "lspt_cli/engine/evaluate.py": ["tests/test_trainer.py"],
    "lspt_cli/engine/distributed.py": ["tests/test_engine_mutants.py", "tests/test_trainer.py", "tests/test_distributed.py"],
    "lspt_cli/engine/checkpoint.py": ["tests/test_engine_mutants.py", "tests/reliability/test_crash_resume.py", "tests/test_tune_e2e.py"],
    "lspt_cli/engine/restore.py": ["tests/test_engine_mutants.py", "tests/test_bundle.py", "tests/reliability/test_bad_inputs.py", "tests/test_trainer.py"],
    "lspt_cli/engine/accel.py": ["tests/test_engine_mutants.py", "tests/test_performance.py"],
    "lspt_cli/engine/feature_cache.py": ["tests/test_engine_mutants.py", "tests/test_performance.py"],
    "lspt_cli/engine/grad_watch.py": ["tests/test_engine_mutants.py", "tests/test_plugin_kit.py", "tests/test_trainer.py"],
    "lspt_cli/engine/totals.py": ["tests/test_engine_mutants.py", "tests/test_performance.py", "tests/test_trainer.py"],
    # train.py and the modules it conducts: the in-process tests (each run < 1 s); the CLI suites (test_tune_e2e,
    # test_tune_workflows, test_protocol's CLI runs) drive the same loop in minutes, too slow per mutant
    # (`--bugs` still uses them)
    **{f"lspt_cli/engine/{m}.py": LOOP_TESTS for m in ("train", "schedule", "optimizer", "rng", "run_files")},
    "plugins/strategies/__init__.py": ["tests/test_strategies.py"],
    "plugins/strategies/linear.py": ["tests/test_strategies.py"],
    "plugins/strategies/vpt.py": ["tests/test_strategies.py", "tests/test_trainer.py", "tests/test_explain.py"],
    "plugins/strategies/parts.py": ["tests/test_strategies.py", "tests/test_trainer.py", "tests/test_explain.py"],
    "plugins/strategies/gapt.py": ["tests/test_strategies.py", "tests/test_trainer.py", "tests/test_explain.py"],
    "plugins/strategies/lspt.py": ["tests/test_strategies.py", "tests/test_trainer.py", "tests/test_explain.py"],
    "lspt_cli/bundle.py": ["tests/test_bundle_mutants.py", "tests/test_bundle.py", "tests/reliability/test_fuzz.py", "tests/reliability/test_bad_inputs.py"],
    "lspt_cli/sweep/grid.py::_tie_value,selection_key,select_best,ordered_point": ["tests/test_sweep.py"],
    "lspt_cli/data/transforms.py": ["tests/test_transforms_mutants.py", "tests/test_protocol_data.py", "tests/test_trainer.py",
                                    "tests/test_data_images.py", "tests/test_datasets.py"],
}
# Not in the default run (time), but available with --module.
EXTRA_TARGETS: dict[str, list[str]] = {
    "lspt_cli/explain.py::rollout,compute_maps,TokenRecorder": ["tests/test_explain.py"],
}
# Equivalent mutants, checked by hand: (a snippet of the mutated line, old, new, why no result can
# change). They are not run (--run-equivalent runs them), are reported with their reason and count as
# not killed: the score stays killed / mutants; `score_without_equivalent` leaves them out.
EQUIVALENT: dict[str, list[tuple[str, str, str, str]]] = {
    "lspt_cli/engine/schedule.py": [
        ("if warmup_steps > 0 and", "warmup_steps > 0", "warmup_steps >= 0",
         "with 0 warm-up steps the other half, step < 0, is false anyway"),
        ("float(max(1.0, warmup_epochs))", "1.0", "2.0",
         "reached only for epoch < warmup_epochs (integers): with warm-up 1, epoch 0 gives 0 / anything = 0"),
        ("max(1, math.ceil(order_length", "1", "0",
         "ceil(n / b) >= 1 for a shard of n >= 1 images; an empty shard (fewer images than ranks) trains no step either way"),
    ],
    "lspt_cli/engine/run_files.py": [
        ('b"x" * 4096', "4096", "4097", "the probe's size (one block or so) has no result"),
        ("stale.unlink(missing_ok=True)", "True", "False", "the file was just listed by glob; only a concurrent delete differs"),
    ],
    "lspt_cli/engine/train.py": [
        ('or world_size <= 1:', "world_size <= 1", "world_size < 1",
         "world_size >= 1; with 1 rank `split` gives batch_size // 1 = batch_size"),
        ('or world_size <= 1:', "1", "0", "world_size >= 1; with 1 rank `split` gives batch_size // 1 = batch_size"),
        ('data_cfg["input_size"][-1]', "-1", "(1)", "every backbone's input is square (the transforms crop S x S)"),
        ('best, running = 0, 0, {"top1": -1.0', "1.0", "2.0", "any negative start: a val top-1 is >= 0"),
        ("                self.optimizer.zero_grad(set_to_none=True)", "True", "False",
         "zeroed instead of freed gradients: backward fills every used one, the optimizers skip the same unused ones"),
        ("max(elapsed, 1e-9)", "1e-9", "2e-09", "a guard against 0 s; no step takes under 2 ns"),
        ("max(seconds, 1e-9)", "1e-9", "2e-09", "a guard against 0 s; no epoch takes under 2 ns"),
        ("max(totals[2], 1)", "1", "0", "every epoch sees at least one image (an empty shard trains no step either way)"),
        ('self.optimizer.param_groups[0]["lr"]', "0", "1",
         "every group has the same lr (one base lr times the factor) and there are always 2 (the head's bias is 1-D)"),
        ('r.get("seconds", 0.0)', "0.0", "1.0", "every metrics record the trainer writes has `seconds`"),
    ],
    "lspt_cli/engine/evaluate.py": [
        ("total.clamp(min=1)", "1", "0", "an absent class divides 0 by 0, but torch.where(present, ...) discards that value"),
    ],
    "lspt_cli/engine/grad_watch.py": [
        ("file=sys.stderr, flush=True)", "True", "False",
         "sys.stderr is line-buffered (Python >= 3.9, tty or not): print's newline flushes it anyway"),
    ],
    "plugins/strategies/parts.py": [
        ("training and dropout.p > 0", "training and dropout.p > 0", "((training) or (dropout.p > 0))",
         "nn.Dropout in eval mode is the identity (no RNG drawn): the test only saves a kernel launch"),
        ("training and dropout.p > 0", "dropout.p > 0", "dropout.p >= 0",
         "dropout with p = 0 returns its input (no RNG drawn): the test only saves a kernel launch"),
    ],
    "lspt_cli/sweep/grid.py": [
        ("return (1, 0.0, str(value))", "0.0", "1.0",
         "the middle item is compared only between two strings (the first items tie), where it is the same constant"),
    ],
}
# Too slow to run for every mutant (the 25-epoch quickstart); the fast tests pin the same behaviour.
DESELECT = ["tests/test_tune_e2e.py::test_quickstart_learns_digits_far_above_chance"]
# The bugs of issue 16, re-introduced by hand (`--bugs`): (name, file, [(old, new)], tests). Each must
# make a test fail; the report names the first test that does.
TRAINER_TESTS = ["tests/test_trainer.py", "tests/test_protocol.py", "tests/test_tune_workflows.py", "tests/test_tune_e2e.py"]
BUGS: list[tuple[str, str, list[tuple[str, str]], list[str]]] = [
    ("optimizer.step() removed", "lspt_cli/engine/train.py", [("self.optimizer.step()", "pass")], TRAINER_TESTS),
    ("optimizer.step() removed: the learning bar", "lspt_cli/engine/train.py", [("self.optimizer.step()", "pass")],
     ["tests/test_tune_e2e.py::test_quickstart_learns_digits_far_above_chance"]),
    ("best-val state not reloaded before the test evaluation", "lspt_cli/engine/train.py",
     [("self.model.load_trainable_state_dict(selected.tensors)", "pass")], TRAINER_TESTS),
    ("last epoch always selected", "lspt_cli/engine/train.py", [('if val["top1"] > best["top1"]:', "if True:")], TRAINER_TESTS),
    ("ties keep the later epoch", "lspt_cli/engine/train.py", [('if val["top1"] > best["top1"]:', 'if val["top1"] >= best["top1"]:')], TRAINER_TESTS),
    ("constant learning rate (no warm-up, no cosine)", "lspt_cli/engine/schedule.py",
     [('group["lr"] = self.base_lr * factor', 'group["lr"] = self.base_lr')], TRAINER_TESTS),
    ("weight decay on gates, temperatures and biases", "lspt_cli/engine/optimizer.py",
     [("(decay if p.ndim >= 2 else no_decay).append(p)", "decay.append(p)")], TRAINER_TESTS),
    ("gradient clipping removed", "lspt_cli/engine/train.py",
     [("torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)", "pass")], TRAINER_TESTS),
    ("--final trains on train only", "lspt_cli/selection.py",
     [('return self.final_split if final else "train"', 'return "train"')], TRAINER_TESTS),
    ("mean per-class accuracy computed as plain top-1", "lspt_cli/engine/evaluate.py",
     [('100.0 * per_class[present].mean().item() if present.any() else 0.0', '100.0 * correct.sum().item() / max(n, 1)')],
     ["tests/test_trainer.py"]),
    ("predict uses the training transform", "lspt_cli/cli/predict.py", [("train=False, style=style or None)", "train=True, style=style or None)")],
     ["tests/test_trainer.py", "tests/test_tune_e2e.py"]),
    ("predict skips normalisation", "lspt_cli/cli/predict.py",
     [('data_cfg["mean"], data_cfg["std"],', "(0.0, 0.0, 0.0), (1.0, 1.0, 1.0),")],
     ["tests/test_trainer.py", "tests/test_tune_e2e.py"]),
    ("training augmentation removed", "lspt_cli/data/transforms.py",
     [("steps += [v2.RandomCrop(input_size), v2.RandomHorizontalFlip()]", "steps += [v2.CenterCrop(input_size)]")],
     ["tests/test_trainer.py"]),
    ("prompt dropout never applied (VPT-shallow, GaPT, LSPT)", "plugins/strategies/parts.py",
     [("        return dropout(prompts)\n", "        return prompts\n")], ["tests/test_trainer.py"]),
    ("the seed does not affect the data order", "lspt_cli/engine/rng.py",
     [("torch.Generator().manual_seed(seed * 100_003 + epoch)", "torch.Generator().manual_seed(epoch)")], TRAINER_TESTS),
    ("DDP ranks all read the same data", "lspt_cli/engine/distributed.py",
     [("return order[self.rank :: self.world_size][:per_rank]", "return order[:per_rank]")],
     ["tests/test_trainer.py::test_two_ddp_ranks_see_disjoint_halves_and_end_equal"]),
    ("DDP without gradient averaging", "lspt_cli/engine/train.py",
     [("self.train_model = DistributedDataParallel(self.model, device_ids=ids)", "self.train_model = self.model")],
     ["tests/test_trainer.py::test_two_ddp_ranks_see_disjoint_halves_and_end_equal"]),
    ("prompts moved consistently to the end of the sequence", "lspt_cli/prompted.py", [
        ("return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix :]], dim=1)", "return torch.cat([x, prompts], dim=1)"),
        ("return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix + p :]], dim=1)", "return torch.cat([x[:, : x.shape[1] - p], prompts], dim=1)"),
        ("return x[:, self.prefix : self.prefix + self.num_prompts]", "return x[:, x.shape[1] - self.num_prompts :]"),
        ("return x[:, self.prefix + self.num_prompts :]", "return x[:, self.prefix : x.shape[1] - self.num_prompts]"),
    ], ["tests/test_explain.py", "tests/test_strategies.py"]),
    ("attention rollout multiplied in the wrong order", "lspt_cli/explain.py", [("result = a @ result", "result = result @ a")],
     ["tests/test_explain.py"]),
]

# Code that runs only in subprocesses (torchrun ranks) is invisible to the line recorder: these
# tests run for every mutant of the module.
SUBPROCESS_TESTS: dict[str, list[str]] = {
    "lspt_cli/engine/distributed.py": ["tests/test_trainer.py::test_two_ddp_ranks_see_disjoint_halves_and_end_equal",
                                       "tests/test_distributed.py"],
}
HEAVY_IMPORTS = ("torch", "torchvision", "timm", "numpy", "safetensors.torch", "PIL.Image", "typer", "rich",
                 "pluggy", "hypothesis", "pytest", "click")


# -- finding mutants -----------------------------------------------------------------------------
@dataclass
class Mutant:
    path: str
    line: int
    col: int
    end_line: int
    end_col: int
    old: str
    new: str
    kind: str

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.old!r} -> {self.new!r}"


CMP_SWAP = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
            ast.In: "not in", ast.NotIn: "in", ast.Is: "is not", ast.IsNot: "is"}
CMP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
BIN_SWAP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
            ast.FloorDiv: ("//", "*"), ast.Mod: ("%", "//"), ast.Pow: ("**", "*")}


def _segment(lines: list[str], node) -> str:
    return ast.get_source_segment("".join(lines), node) or ""


def _docstring_nodes(tree) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


# Keyword arguments whose value cannot change a result (equivalent mutants, not generated):
# non_blocking is a host-to-device copy hint (a no-op on CPU, synchronised before use on CUDA).
EQUIVALENT_KEYWORDS = {"non_blocking"}


def _skipped_nodes(tree) -> set[int]:
    """Nodes nobody should mutate: annotations, f-strings (messages), imports, EQUIVALENT_KEYWORDS."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in EQUIVALENT_KEYWORDS:
            skip.update(id(n) for n in ast.walk(node.value))
        for ann in ("annotation", "returns"):
            sub = getattr(node, ann, None)
            if sub is not None:
                skip.update(id(n) for n in ast.walk(sub))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def find_mutants(path: str, source: str, functions: set[str] | None) -> list[Mutant]:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    docs, skip = _docstring_nodes(tree), _skipped_nodes(tree)
    scope: dict[int, str] = {}
    # the outermost named def/class enclosing each node (for ::function filters)
    def mark(node, name):
        for child in ast.iter_child_nodes(node):
            inner = name
            if name is None and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = child.name
            if inner is not None:
                scope[id(child)] = inner
            mark(child, inner)
    mark(tree, None)

    out: list[Mutant] = []

    def add(node, old_text, new_text, kind, start=None, end=None):
        (l1, c1), (l2, c2) = start or (node.lineno, node.col_offset), end or (node.end_lineno, node.end_col_offset)
        out.append(Mutant(path, l1, c1, l2, c2, old_text, new_text, kind))

    for node in ast.walk(tree):
        if id(node) in skip or id(node) in docs:
            continue
        if functions is not None and scope.get(id(node)) not in functions:
            continue
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            op = type(node.ops[0])
            if op in CMP_SWAP:
                left, right = _segment(lines, node.left), _segment(lines, node.comparators[0])
                old = _segment(lines, node)
                add(node, old, f"{left} {CMP_SWAP[op]} {right}", "compare")
        elif isinstance(node, ast.BinOp) and type(node.op) in BIN_SWAP:
            left, right = _segment(lines, node.left), _segment(lines, node.right)
            sym, new = BIN_SWAP[type(node.op)]
            add(node, _segment(lines, node), f"({left}) {new} ({right})", "arith")
        elif isinstance(node, ast.BoolOp):
            joined = (" or " if isinstance(node.op, ast.And) else " and ").join(f"({_segment(lines, v)})" for v in node.values)
            add(node, _segment(lines, node), f"({joined})", "boolean")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            add(node, _segment(lines, node), f"({_segment(lines, node.operand)})", "unary")
        elif isinstance(node, ast.Constant) and not isinstance(node.value, (str, bytes)) and node.value is not None:
            v = node.value
            if isinstance(v, bool):
                new = str(not v)
            elif isinstance(v, int):
                new = "1" if v == 0 else ("0" if v == 1 else str(v + 1))
            elif isinstance(v, float):
                new = "1.0" if v == 0 else repr(v * 2)
            else:
                continue
            add(node, _segment(lines, node), new, "constant")
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            add(node, _segment(lines, node), "pass", "delete call")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                if len(body) == 1:
                    continue
                first = body[1]
            if isinstance(first, ast.Return) and first.value is None:
                continue
            indent = lines[first.lineno - 1][: first.col_offset]
            add(first, "", f"return None\n{indent}", "return early", start=(first.lineno, first.col_offset),
                end=(first.lineno, first.col_offset))
    out.sort(key=lambda m: (m.line, m.col, m.kind, m.new))
    return out


def equivalent_reason(m: Mutant, lines: list[str]) -> str | None:
    """Why `m` is in EQUIVALENT (None: it is not)."""
    text = lines[m.line - 1].encode()  # ast columns are utf-8 byte offsets
    for snippet, old, new, why in EQUIVALENT.get(m.path, []):
        at = text.find(snippet.encode())
        if (m.old, m.new) == (old, new) and 0 <= at <= m.col < at + len(snippet.encode()):
            return why
    return None


def import_time_lines(source: str) -> dict[int, set[int]]:
    """Lines executed at import, not when a test runs them: a def's decorators and signature (defaults)
    map to its body's lines; a module-level or class-level statement (a class decorator too) maps to
    every line of the file."""
    tree = ast.parse(source)
    everything = set(range(1, len(source.splitlines()) + 1))
    out: dict[int, set[int]] = {}

    def visit(body, top: bool):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0].lineno
                for line in range(min([node.lineno] + [d.lineno for d in node.decorator_list]), first):
                    out[line] = set(range(first, node.end_lineno + 1))
            elif isinstance(node, ast.ClassDef):
                for d in node.decorator_list:
                    for line in range(d.lineno, d.end_lineno + 1):
                        out[line] = everything
                visit(node.body, True)
            elif top:
                for line in range(node.lineno, node.end_lineno + 1):
                    out[line] = everything

    visit(tree.body, True)
    return out


def apply(source: str, m: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def pos(line, col):  # ast columns are utf-8 byte offsets
        text = lines[line - 1]
        return offsets[line - 1] + len(text.encode()[:col].decode(errors="ignore"))

    a, b = pos(m.line, m.col), pos(m.end_line, m.end_col)
    new_source = source[:a] + m.new + source[b:]
    ast.parse(new_source)  # a mutant must at least compile
    return new_source


# -- the copy and the fork server -----------------------------------------------------------------
SITECUSTOMIZE = '''
import os
try:
    import __editable___lspt_0_1_0_finder as _finder
except ImportError:
    _finder = None
_root = os.environ.get("MUTATION_COPY_ROOT")
if _finder is not None and _root:
    _finder.MAPPING.update(lspt_cli=os.path.join(_root, "lspt_cli"), lspt_plugins=os.path.join(_root, "plugins"),
                           lspt_recipes=os.path.join(_root, "recipes"))
'''


def make_copy(worktree: bool) -> Path:
    root = Path(tempfile.mkdtemp(prefix="lspt-mutation-"))
    if worktree:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
        for name in filter(None, names):
            src = REPO / name
            if src.is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, root / name)
    else:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (root / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return root


def child_env(root: Path) -> dict[str, str]:
    # not LSPT_*: the reliability tests' lspt_env() drops those, and their `lspt` subprocesses must
    # import the mutant too
    env = dict(os.environ, MUTATION_COPY_ROOT=str(root), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return env


class LineRecorder:
    """A pytest plugin: which test (setup, call, teardown) executes which line of one file."""

    def __init__(self, target: str):
        self.target = target
        self.current: str | None = None
        self.lines: dict[str, set[int]] = {}
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def _global(self, frame, event, arg):
        return self._local if frame.f_code.co_filename == self.target else None

    def _local(self, frame, event, arg):
        if event == "line" and self.current is not None:
            self.lines.setdefault(self.current, set()).add(frame.f_lineno)
        return self._local

    def pytest_runtest_protocol(self, item, nextitem):
        import threading

        self.current = item.nodeid
        sys.settrace(self._global)
        threading.settrace(self._global)

    def pytest_runtest_logfinish(self, nodeid, location):
        sys.settrace(None)
        self.current = None


class FailureRecorder:
    """A pytest plugin: the tests that failed (to name the test that kills a hand-made bug)."""

    def __init__(self):
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.failed and report.nodeid not in self.failed:
            self.failed.append(report.nodeid)


def run_tests(root: Path, tests: list[str], timeout: float, record: str | None = None,
              skip_slow: bool = True) -> tuple[str, float, dict]:
    """Fork a child that runs pytest -x on `tests` in the copy: killed, survived or timeout.
    With `record` (a file), the child also returns which test ran which line of it."""
    started = time.time()
    result_file = Path(tempfile.mkstemp(prefix="lspt-mutation-lines-")[1])
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(root)
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1), os.dup2(devnull, 2)
            import pytest

            failures = FailureRecorder()
            plugins = [failures] + ([LineRecorder(record)] if record else [])
            deselect = [a for t in DESELECT for a in ("--deselect", t)] if skip_slow else []
            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *deselect, *tests], plugins=plugins)
            lines = {k: sorted(v) for k, v in plugins[1].lines.items()} if record else {}
            seconds = plugins[1].seconds if record else {}
            result_file.write_text(json.dumps({"lines": lines, "seconds": seconds, "failed": failures.failed}))
            os._exit(int(code))
        except BaseException:
            os._exit(99)
    deadline = started + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                lines = json.loads(result_file.read_text() or "{}")
                # 0: all passed; 5: no tests collected (counts as survived: nothing checked it)
                return ("survived" if code in (0, 5) else "killed"), time.time() - started, lines
            if time.time() > deadline:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                return "timeout", time.time() - started, {}
            time.sleep(0.05)
    finally:
        result_file.unlink(missing_ok=True)


def check_imports_copy(root: Path) -> None:
    """The mutants are only tested if lspt really imports from the copy (here and in subprocesses)."""
    probe = ("import lspt_cli, lspt_plugins.strategies, lspt_recipes; "
             "print(lspt_cli.__file__); print(lspt_plugins.strategies.__file__); print(lspt_recipes.__file__)")
    out = subprocess.run([sys.executable, "-c", probe], env=os.environ, cwd=tempfile.gettempdir(), capture_output=True,
                         text=True, check=True).stdout
    for line in out.split():
        if not line.startswith(str(root)):
            raise SystemExit(f"mutation: lspt imports {line}, not the copy in {root}; refusing to run")


def run_bugs(root: Path, timeout: float) -> int:
    results, missed = [], 0
    for name, path, edits, tests in BUGS:
        file = root / path
        original = source = file.read_text()
        for old, new in edits:
            if source.count(old) != 1:
                raise SystemExit(f"mutation: bug {name!r}: {old!r} is not once in {path} (the code changed?)")
            source = source.replace(old, new)
        file.write_text(source)
        try:
            outcome, took, info = run_tests(root, [t for t in tests if (root / t.split("::")[0]).exists()], timeout,
                                            skip_slow=False)
        finally:
            file.write_text(original)
        missed += outcome == "survived"
        results.append({"bug": name, "outcome": outcome, "failing_test": (info.get("failed") or [None])[0],
                        "seconds": round(took, 1)})
        print(f"{outcome:8s} {took:6.1f}s {name}: {results[-1]['failing_test']}", file=sys.stderr, flush=True)
    print(json.dumps({"bugs": results, "missed": missed}, indent=2))
    return 1 if missed else 0


def run_in_parallel(modules: list[str], args: argparse.Namespace) -> int:
    """`--jobs N`: one child process per module (each with its own copy and fork server), N at a time;
    their JSON reports are merged into one. Modules are independent, so this only changes the wall time."""
    from concurrent.futures import ThreadPoolExecutor

    common = ["--timeout", str(args.timeout), "--sample", str(args.sample), "--seed", str(args.seed)]
    common += ["--worktree"] * args.worktree + ["--run-equivalent"] * args.run_equivalent
    started = time.time()

    def one(module: str) -> dict:
        out = subprocess.run([sys.executable, __file__, *common, "--module", module], stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            raise SystemExit(f"mutation: {module} failed (exit {out.returncode})")
        return json.loads(out.stdout)

    # the biggest files first (most mutants), so that no long module starts last and runs alone
    order = sorted(modules, key=lambda m: -(REPO / m.split("::")[0]).stat().st_size)
    with ThreadPoolExecutor(args.jobs) as pool:
        parts = list(pool.map(one, order))
    report: dict = {"modules": {}, "survivors": [], "timeouts": [], "equivalent": []}
    for part in parts:
        report["modules"].update(part["modules"])
        for key in ("survivors", "timeouts", "equivalent"):
            report[key] += part.get(key, [])
    report["seconds"] = round(time.time() - started, 1)
    report["jobs"] = args.jobs
    print(json.dumps(report, indent=2))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", action="append", help="a key of TARGETS (or its path); default: all")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant (default 180)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--worktree", action="store_true", help="mutate the working tree's files, not HEAD's")
    ap.add_argument("--sample", type=int, default=0, help="a random sample of N mutants per module (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="the sample's seed")
    ap.add_argument("--run-equivalent", action="store_true", help="run the mutants of EQUIVALENT too (they should survive)")
    ap.add_argument("--bugs", action="store_true", help="re-introduce issue 16's bugs by hand; name the test that fails")
    ap.add_argument("--jobs", type=int, default=1, help="modules run at once, each in its own process and copy "
                    "(default 1; 2 uses both cores of an idle 2-core machine)")
    args = ap.parse_args(argv)
    targets = TARGETS
    if args.module:
        every = {**TARGETS, **EXTRA_TARGETS}
        targets = {k: v for k, v in every.items() if k in args.module or k.split("::")[0] in args.module}
        if not targets:
            raise SystemExit(f"unknown module; choose from: {', '.join(TARGETS)}")
    if args.jobs > 1 and len(targets) > 1 and not (args.list or args.bugs):
        return run_in_parallel(list(targets), args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes the copy
    # started in the background (nohup ... &), SIGINT is ignored and every process started from here
    # inherits that: the Ctrl-C tests' `lspt` would never see their SIGINT. Python's own handler is
    # reset to the default by exec, so subprocesses handle Ctrl-C as from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root = make_copy(args.worktree)
    os.environ.update(child_env(root))
    sys.path.insert(0, str(root))
    exec(SITECUSTOMIZE, {})  # this process too: its forked children import lspt from the copy
    try:
        check_imports_copy(root)
        for name in HEAVY_IMPORTS:  # once, in the fork server (never lspt itself)
            __import__(name)
        if args.bugs:
            return run_bugs(root, args.timeout)
        report, started = {"modules": {}, "survivors": [], "timeouts": []}, time.time()
        for key, tests in targets.items():
            path, _, funcs = key.partition("::")
            functions = set(funcs.split(",")) if funcs else None
            file = root / path
            original = file.read_text()
            module_started = time.time()
            mutants = find_mutants(path, original, functions)
            if args.sample and args.sample < len(mutants):
                import random

                mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m.line, m.col))
            if args.list:
                for m in mutants:
                    print(m.describe())
                continue
            tests = [t for t in tests if (root / t.split("::")[0]).exists()]
            baseline, seconds, info = run_tests(root, tests, args.timeout * 5, record=str(file))
            if baseline != "survived":
                raise SystemExit(f"mutation: the tests of {key} fail without any mutant ({baseline}: "
                                 f"{', '.join(info.get('failed', []))}); fix them first")
            covered = info["lines"]
            # fastest test first: a mutant dies at its first failing test (-x)
            order = {t: info["seconds"].get(t, 0.0) for t in covered}
            import_time = import_time_lines(original)
            counts = {"mutants": 0, "killed": 0, "survived": 0, "timeouts": 0, "not_run_by_any_test": 0, "equivalent": 0}
            source_lines = original.splitlines(keepends=True)
            for m in mutants:
                why = equivalent_reason(m, source_lines)
                if why and not args.run_equivalent:
                    counts["mutants"] += 1
                    counts["equivalent"] += 1
                    report.setdefault("equivalent", []).append(f"{m.describe()}  [{why}]")
                    print(f"equivalent         {m.describe()}", file=sys.stderr, flush=True)
                    continue
                span = set(range(m.line, m.end_line + 1))
                # a line run at import (a def's defaults, a module constant) counts for every test that
                # runs the function (or, at module level, any line of the file)
                span = import_time.get(m.line, span)
                selected = sorted((t for t, lines in covered.items() if span & set(lines)), key=order.get)
                selected += [t for t in SUBPROCESS_TESTS.get(path, []) if t not in selected]
                counts["mutants"] += 1
                if not selected:
                    outcome, took = "survived", 0.0
                    counts["not_run_by_any_test"] += 1
                else:
                    file.write_text(apply(original, m))
                    try:
                        outcome, took, _ = run_tests(root, selected, args.timeout)
                    finally:
                        file.write_text(original)
                counts[{"killed": "killed", "survived": "survived", "timeout": "timeouts"}[outcome]] += 1
                if outcome == "survived":
                    report["survivors"].append(m.describe() + ("" if selected else "  [no test runs this line]"))
                elif outcome == "timeout":
                    report["timeouts"].append(m.describe())
                print(f"{outcome:8s} {took:6.1f}s {len(selected):3d} tests  {m.describe()}", file=sys.stderr, flush=True)
            # a timeout is not counted as killed: a slow machine times out equivalent mutants too
            counts["score"] = round(100.0 * counts["killed"] / counts["mutants"], 1) if counts["mutants"] else None
            real = counts["mutants"] - counts["equivalent"]
            counts["score_without_equivalent"] = round(100.0 * counts["killed"] / real, 1) if real else None
            counts["baseline_seconds"] = round(seconds, 1)
            counts["sampled_from"] = len(find_mutants(path, original, functions)) if args.sample else None
            counts["seconds"] = round(time.time() - module_started, 1)  # wall time: baseline and mutants
            report["modules"][key] = counts
        if not args.list:
            report["seconds"] = round(time.time() - started, 1)
            print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
