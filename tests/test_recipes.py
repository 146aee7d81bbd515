"""The shipped TOML recipes and the recipe loader/resolver (fast; no torch)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from registered import STRATEGIES

from lspt_cli.errors import ConfigError
from lspt_cli.settings import PROTOCOL_DEFAULTS, TrainConfig
from lspt_cli.recipes import (
    find_recipe,
    load_recipe_file,
    parse_recipe_text,
    resolve_config,
)

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = sorted(RECIPES_DIR.rglob("*.toml"))

PAPER_BACKBONES = ["mae-vitb", "mocov3-vitb"]
PAPER_BENCHMARKS = ["fgvc", "vtab"]
FGVC_TASKS = ["cub", "nabirds", "flowers", "dogs", "cars"]

# Each strategy's own option keys (DESIGN.md section 4); hard-coded so a typo in a recipe fails here.
STRATEGY_KEYS = {
    "linear": set(),
    "vpt-shallow": {"num_prompts", "dropout"},
    "vpt-deep": {"num_prompts", "dropout"},
    "gapt": {"num_prompts", "gate_init", "temperature", "dropout", "init", "init_images"},
    "lspt": {"num_prompts", "gate_init", "temperature", "dropout", "spatial", "memory", "lstm_dim", "init", "init_images"},
    "spt-shallow": {"num_prompts", "init", "init_images", "kmeans_iters", "dropout"},
    "spt-deep": {"num_prompts", "init", "init_images", "kmeans_iters", "dropout"},
    "vfpt": {"num_prompts", "fourier_fraction", "fourier_dims", "dropout"},
    "vfpt-shallow": {"num_prompts", "fourier_fraction", "fourier_dims", "dropout"},
}

# The strategies that ship the papers' recipes for every backbone x benchmark (below), by name: a new
# strategy joins when its recipes do. SPT's recipes follow its official code's README commands and
# argparse defaults (its per-task recipes are only a download: Self-Prompt-Tuning README.md:62).
PAPER_RECIPE_STRATEGIES = ["linear", "vpt-shallow", "vpt-deep", "gapt", "lspt", "spt-shallow", "spt-deep", "vfpt",
                           "vfpt-shallow"]

# SPT's settings (WangYZ1608/Self-Prompt-Tuning@ce0754f; the recipes cite file:line): the same for every
# task of a benchmark, as the official code publishes no per-task values. backbone -> (lr, weight_decay,
# readout, head init, lr grid): MAE from README.md:81-83 (SPT-deep, CUB-200, train_MAE.py); MoCo v3 has no
# official run, so lspt starts from README.md:113-115's (train.py, the supervised ViT) and says so.
SPT_TRAIN = {
    "mae-vitb": (0.05, 0.01, "mean-norm", "normal", [0.005, 0.01, 0.025, 0.05, 0.1]),
    "mocov3-vitb": (0.001, 0.01, "cls", "normal", [0.0001, 0.0005, 0.001, 0.005, 0.01]),
}
SPT_PROMPTS = {"spt-deep": 20, "spt-shallow": 100}  # README.md:89: "20 for deep, and 100 for shallow"

# GaPT's per-task FGVC settings (DESIGN.md section 7): task -> (lr, gate_init).
GAPT_FGVC = {
    "mae-vitb": {"cub": (0.1, 5), "flowers": (0.1, 15), "cars": (0.25, 5), "dogs": (0.5, 15), "nabirds": (0.5, 5)},
    "mocov3-vitb": {"cub": (1.0, 5), "flowers": (1.0, 10), "cars": (0.5, 5), "dogs": (0.5, 10), "nabirds": (1.0, 5)},
}


@pytest.fixture
def recipes():
    from lspt_cli.plugins import get_host

    return get_host().recipes


def resolve(recipes, strategy="gapt", backbone="mae-vitb", benchmark="fgvc", task="cars", **kwargs):
    return resolve_config(
        backbone=backbone, strategy=strategy, task=task, benchmark=benchmark, registered_recipes=recipes, **kwargs
    )


def write(tmp_path, text, name="mine.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped files ---------------------------------------------------------------------------


def test_recipes_are_shipped():
    assert len(SHIPPED) >= 21
    stems = [p.stem for p in SHIPPED]
    assert len(stems) == len(set(stems)), "recipe names (file stems) must be unique"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_recipe_parses_and_is_documented(path):
    data = load_recipe_file(path)
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"# Source: \S", first), f"{path.name} must begin with a '# Source:' line"
    assert isinstance(data.get("description"), str) and data["description"].strip()
    match = data["match"]
    assert match.get("strategy") and match.get("backbone") and match.get("benchmark")
    # Each layer (with the task overrides applied) is a valid TrainConfig.
    for task in ["*", *data.get("tasks", {})]:
        train = {**data.get("train", {}), **data.get("tasks", {}).get(task, {}).get("train", {})}
        TrainConfig(**train).validate(path.name)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_strategy_keys_are_known_for_the_matched_strategy(path):
    data = load_recipe_file(path)
    strategy = data["match"]["strategy"]
    if strategy == "*":
        allowed = set.intersection(*STRATEGY_KEYS.values())  # must be valid for every strategy: nothing
    else:
        assert strategy in STRATEGY_KEYS, f"{path.name}: unknown strategy {strategy!r}"
        allowed = STRATEGY_KEYS[strategy]
    layers = [data.get("strategy", {})] + [o.get("strategy", {}) for o in data.get("tasks", {}).values()]
    for layer in layers:
        assert set(layer) <= allowed, f"{path.name}: {sorted(set(layer) - allowed)} not options of {strategy}"
    # A grid searches train keys or the strategy's own keys, nothing else.
    assert set(data.get("grid", {})) <= set(TrainConfig.keys()) | allowed


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_paper_recipes_follow_the_protocol(path):
    data = load_recipe_file(path)
    if data["match"]["backbone"] not in PAPER_BACKBONES:
        return
    train = data["train"]
    assert train["protocol"] == "paper"
    if data["match"]["strategy"].startswith("spt-"):  # SPT's train_MAE.py / train_MoCo.py: AdamW, per-step cosine
        assert (train["epochs"], train["warmup_epochs"], train["optimizer"], train["batch_size"]) == (100, 10, "adamw", 32)
        assert (train["schedule"], train["lr_scaling"], train["head_init"]) == ("per-step", "none", "normal")
        assert "momentum" not in train  # AdamW has none; the recipe sets only what SPT's code sets
        assert data["grid"]["weight_decay"] == [0.05, 0.01]  # the argparse default and the README's
        return
    assert (train["epochs"], train["warmup_epochs"], train["optimizer"], train["momentum"]) == (100, 10, "sgd", 0.9)
    if data["match"]["strategy"] == "linear":  # VPT's configs/base-linear.yaml:25
        assert train["batch_size"] == 1024
    elif data["match"]["strategy"] in ("gapt", "lspt") and data["match"]["benchmark"] == "fgvc":
        assert train["batch_size"] == 64  # GaPT's README.md:37 (`bash run.sh cub mae_vitb16 64 ...`)
    elif data["match"]["strategy"].startswith("vfpt"):  # VFPT's configs/base-prompt_fourier_{mae,moco}.yaml:25
        assert train["batch_size"] == 64
    else:  # VPT: configs/base-prompt.yaml:25 and demo.ipynb:824-828 (tune_fgvc.py on CUB), 128 on FGVC too
        assert train["batch_size"] == 128
    if data["match"]["strategy"] in ("gapt", "lspt"):  # GaPT's run.sh: wd 0.0, lr as given, GaPT's lr range
        assert train["weight_decay"] == 0.0 and "weight_decay" not in data["grid"] and train["lr_scaling"] == "none"
        assert min(data["grid"]["lr"]) == 0.05 and max(data["grid"]["lr"]) == 5.0
    else:  # VPT's tune scripts: wd grid, lr grid up to 50, x batch/256
        assert data["grid"]["weight_decay"] == [0.01, 0.001, 0.0001, 0.0] and train["lr_scaling"] == "batch/256"
        assert max(data["grid"]["lr"]) == 50.0
    if data["match"]["strategy"] == "lspt":
        assert "GaPT" in path.read_text(encoding="utf-8").splitlines()[0]  # says what it inherits


def test_every_combination_has_a_registered_recipe(recipes):
    assert {p.stem for p in SHIPPED} <= set(recipes.names())
    for strategy, backbone, benchmark in itertools.product(PAPER_RECIPE_STRATEGIES, PAPER_BACKBONES, PAPER_BENCHMARKS):
        task = "cub" if benchmark == "fgvc" else "vtab/cifar"
        spec = find_recipe(recipes, strategy, backbone, benchmark, task)
        assert spec is not None, (strategy, backbone, benchmark)
        assert (spec.strategy, spec.backbone, spec.benchmark) == (strategy, backbone, benchmark)
        assert spec.name == f"{strategy}-{backbone}-{benchmark}"
        assert spec.source and spec.description


@pytest.mark.parametrize("strategy", STRATEGIES + ["some-plugin-strategy"])
def test_vit_tiny_demo_recipe(recipes, strategy):
    spec = find_recipe(recipes, strategy, "vit-tiny", "custom", "digits")
    assert spec is not None and spec.backbone == "vit-tiny"
    config = resolve(recipes, strategy=strategy, backbone="vit-tiny", benchmark="custom", task="digits")
    assert 10 <= config.train.epochs <= 40 and config.train.warmup_epochs == 2 and config.train.batch_size == 64
    if strategy in PAPER_RECIPE_STRATEGIES:  # each strategy with paper recipes has its own demo too
        assert spec.name == f"vit-tiny-{strategy}"
    if spec.name == f"vit-tiny-{strategy}" and strategy != "linear":
        assert config.strategy_config["num_prompts"] == 8
    else:  # the wildcard demo sets no strategy option: it must suit every strategy
        assert spec.name in ("vit-tiny-demo", "vit-tiny-linear") and config.strategy_config == {}


# -- per-task overrides and resolution order ------------------------------------------------------


@pytest.mark.parametrize("strategy", ["gapt", "lspt"])
@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
@pytest.mark.parametrize("task", FGVC_TASKS)
def test_gapt_per_task_settings(recipes, strategy, backbone, task):
    config = resolve(recipes, strategy=strategy, backbone=backbone, task=task)
    lr, gate = GAPT_FGVC[backbone][task]
    assert config.train.lr == lr
    assert config.strategy_config["gate_init"] == gate
    assert config.strategy_config["num_prompts"] == 100
    assert config.recipes == [f"{strategy}-{backbone}-fgvc"]


VTAB_TASK_IDS = ["vtab/cifar", "vtab/caltech101", "vtab/dtd", "vtab/oxford_flowers102", "vtab/oxford_iiit_pet",
                 "vtab/svhn", "vtab/sun397", "vtab/patch_camelyon", "vtab/eurosat", "vtab/resisc45",
                 "vtab/diabetic_retinopathy", "vtab/clevr_count", "vtab/clevr_dist", "vtab/dmlab", "vtab/kitti",
                 "vtab/dsprites_loc", "vtab/dsprites_ori", "vtab/smallnorb_azi", "vtab/smallnorb_ele"]


@pytest.mark.parametrize("strategy", sorted(SPT_PROMPTS))
@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
@pytest.mark.parametrize("task", FGVC_TASKS + VTAB_TASK_IDS)
def test_spt_per_task_settings(recipes, strategy, backbone, task):
    """Every task resolves to SPT's cited values: the recipe names no task of its own, since the official
    code publishes none; `lspt sweep` searches the [grid] around them."""
    benchmark = "fgvc" if task in FGVC_TASKS else "vtab"
    config = resolve(recipes, strategy=strategy, backbone=backbone, benchmark=benchmark, task=task)
    lr, wd, readout, head_init, grid = SPT_TRAIN[backbone]
    train = config.train
    assert (train.lr, train.weight_decay, train.readout, train.head_init) == (lr, wd, readout, head_init)
    assert (train.optimizer, train.batch_size, train.epochs, train.warmup_epochs) == ("adamw", 32, 100, 10)
    assert (train.schedule, train.lr_scaling, train.scaled_lr, train.protocol) == ("per-step", "none", lr, "paper")
    assert (train.amp, train.grad_clip) == ("off", 0.0)  # the official scripts: fp32, no clipping
    assert config.strategy_config == {"num_prompts": SPT_PROMPTS[strategy], "init": "random", "init_images": 1000,
                                      "dropout": 0.0}
    assert config.recipes == [f"{strategy}-{backbone}-{benchmark}"]
    data = load_recipe_file(RECIPES_DIR / f"{strategy}-{backbone}-{benchmark}.toml")
    assert "tasks" not in data and data["grid"] == {"lr": grid, "weight_decay": [0.05, 0.01]}
    assert lr in grid


def test_spt_recipes_say_what_the_official_code_does_not_give():
    """The headers name the gaps: no per-task values (a download), no MoCo v3 run, and the settings lspt
    cannot express (the head's own weight decay, EMA)."""
    for path in sorted(RECIPES_DIR.glob("spt-*-vitb-*.toml")):
        text = path.read_text(encoding="utf-8")
        assert "README.md:62" in text and "no per-task settings" in text.splitlines()[0], path.name
        assert "head's weight decay" in text and "EMA" in text and "lspt's choice" in text, path.name
        if "mocov3" in path.name:
            assert "SPT gives no MoCo v3 run" in text and "train.py:224" in text, path.name


def test_spt_recipe_reference_numbers_match_the_report():
    """A recipe's 'Paper reference' line and `lspt report`'s REFERENCE table say the same numbers."""
    from lspt_cli.report import REFERENCE

    for path in sorted(RECIPES_DIR.glob("spt-*-vitb-*.toml")):
        data = load_recipe_file(path)
        match = data["match"]
        ref = REFERENCE.get((match["backbone"], match["strategy"]), {})
        text = path.read_text(encoding="utf-8")
        block = text[text.index("# Paper reference"):].split("\n#\n")[0]  # the reference's lines
        names = {"fgvc": ("fgvc_mean",), "vtab": ("natural", "specialized", "structured")}[match["benchmark"]]
        known = [name for name in names if name in ref]
        if not known:
            assert block.startswith("# Paper reference: none in lspt"), path.name
        for name in known:
            assert f"{ref[name]:.2f}".rstrip("0").rstrip(".") in block or f"{ref[name]:.2f}" in block, (path.name, name)


def test_named_per_task_values(recipes):
    cars = resolve(recipes, task="cars")
    assert (cars.train.lr, cars.strategy_config["gate_init"]) == (0.25, 5)
    dogs = resolve(recipes, task="dogs")
    assert (dogs.train.lr, dogs.strategy_config["gate_init"]) == (0.5, 15)
    moco_cub = resolve(recipes, backbone="mocov3-vitb", task="cub")
    assert (moco_cub.train.lr, moco_cub.strategy_config["gate_init"]) == (1.0, 5)


def test_resolution_order(recipes, tmp_path):
    recipe_file = write(
        tmp_path,
        """
        [train]
        lr = 0.3
        epochs = 7
        [strategy]
        gate_init = 7.0
        dropout = 0.2
        [tasks.cars.train]
        warmup_epochs = 1
        [tasks.dogs.train]
        warmup_epochs = 3
        """,
    )
    # registered recipe alone (over the defaults)
    base = resolve(recipes)
    assert (base.train.lr, base.train.epochs, base.train.warmup_epochs) == (0.25, 100, 10)
    assert base.train.seed == TrainConfig().seed and base.train.grad_clip == TrainConfig().grad_clip
    # --recipe FILE beats the registered recipe; keys it leaves out keep the registered values
    mine = resolve(recipes, recipe_file=recipe_file)
    assert (mine.train.lr, mine.train.epochs, mine.train.warmup_epochs) == (0.3, 7, 1)
    assert mine.strategy_config == {"num_prompts": 100, "gate_init": 7.0, "dropout": 0.2, "temperature": True}
    assert mine.recipes == ["gapt-mae-vitb-fgvc", str(recipe_file)]
    # CLI flags beat both
    cli = resolve(
        recipes, recipe_file=recipe_file, train_overrides={"lr": 0.4, "batch_size": 32},
        strategy_overrides={"gate_init": 9.0},
    )
    assert (cli.train.lr, cli.train.epochs, cli.train.batch_size) == (0.4, 7, 32)
    assert cli.strategy_config["gate_init"] == 9.0 and cli.strategy_config["dropout"] == 0.2
    # no registered recipe at all: the defaults (VPT's batch 128 on VTAB and FGVC), then the file
    none = resolve([], recipe_file=recipe_file, benchmark="vtab", task="vtab/dtd")
    assert (none.train.lr, none.train.epochs, none.train.batch_size) == (0.3, 7, 128)
    assert none.train.momentum == TrainConfig().momentum and none.recipes == [str(recipe_file)]
    # ... under `auto`: no paper recipe covers the run, so lspt's protocol (issue 21)
    lspt = dict(PROTOCOL_DEFAULTS["lspt"], protocol="lspt")
    bare = resolve([], strategy="linear", task="cub")
    assert bare.train == TrainConfig(batch_size=128, **lspt) and bare.strategy_config == {} and bare.recipes == []
    custom = resolve([], strategy="linear", benchmark="custom", task="digits")
    assert custom.train == TrainConfig(**lspt)  # no benchmark default outside VTAB/FGVC


def test_most_specific_registered_recipe_wins(recipes):
    # vit-tiny: the per-strategy demo (3 fixed fields) beats the wildcard one (2 fixed fields)
    assert find_recipe(recipes, "gapt", "vit-tiny", "fgvc", "cub").name == "vit-tiny-gapt"
    assert find_recipe(recipes, "other", "vit-tiny", "fgvc", "cub").name == "vit-tiny-demo"
    assert find_recipe(recipes, "gapt", "sup-vitb", "fgvc", "cub") is None


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, needles",
    [
        ("[train\nlr = 0.1\n", ["malformed TOML"]),
        ("lr = 0.1\n", ["unknown key 'lr'", "train", "strategy"]),
        ("[match]\nmodel = 'x'\n", ["unknown key 'match.model'", "backbone"]),
        ("[match]\nstrategy = 5\n", ["match.strategy must be a string"]),
        ("[train]\nlearning_rate = 0.1\n", ["unknown key 'learning_rate'", "lr", "epochs", "batch_size"]),
        ("[train]\nlr = '0.1'\n", ["'lr' must be float", "str"]),
        ("[train]\nepochs = 2.5\n", ["'epochs' must be int"]),
        ("[train]\nepochs = true\n", ["'epochs' must be int"]),
        ("[train]\nepochs = 0\n", ["'epochs' must be a positive integer, got 0"]),
        ("[train]\nepochs = -3\n", ["'epochs' must be a positive integer, got -3"]),
        ("[train]\nbatch_size = 0\n", ["'batch_size' must be a positive integer, got 0"]),
        ("[train]\nbatch_size = -64\n", ["'batch_size' must be a positive integer, got -64"]),
        ("[train]\nlr = 0\n", ["'lr' must be > 0"]),
        ("[train]\noptimizer = 'adam'\n", ["'optimizer' must be 'sgd' or 'adamw'"]),
        ("[tasks.cub.train]\nepochs = 0\n", ["[tasks.cub]", "'epochs' must be a positive integer"]),
        ("[tasks.cub.train]\nlr = 'fast'\n", ["[tasks.cub]", "'lr' must be float"]),
        ("[tasks.cub]\nmodel = {}\n", ["[tasks.cub] may only hold"]),
        ("[tasks.cub]\ntrain = 5\n", ["must be tables"]),
        ("train = 5\n", ["[train] must be a table"]),
        ("[grid]\nlr = 0.1\n", ["grid.lr must be a non-empty list"]),
    ],
)
def test_bad_recipe_files_are_config_errors(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe_file(path)
    message = str(info.value)
    assert str(path) in message, message  # the error names the file
    for needle in needles:
        assert needle in message, message


def test_unknown_train_key_lists_all_allowed_keys():
    with pytest.raises(ConfigError) as info:
        parse_recipe_text("[train]\nlearning_rate = 0.1\n", "x.toml")
    message = str(info.value)
    assert "'learning_rate'" in message
    for key in TrainConfig.keys():
        assert key in message


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe_file(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"epochs": 0}, "--epochs: must be a positive integer"),  # a flag is named as the user typed it
        ({"batch_size": -1}, "--batch-size: must be a positive integer"),
        ({"lr": "big"}, "'lr' must be float"),
        ({"nope": 1}, "unknown key 'nope'"),
    ],
)
def test_bad_command_line_values_are_config_errors(recipes, overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        resolve(recipes, train_overrides=overrides)


def test_bad_recipe_file_is_an_error_when_resolving(recipes, tmp_path):
    path = write(tmp_path, "[train]\nepochs = 0\n")
    with pytest.raises(ConfigError, match="must be a positive integer"):
        resolve(recipes, recipe_file=path)


def test_hard_coded_option_keys_match_the_registered_strategies():
    """The key sets above are the built-in strategies' own options (their registered defaults)."""
    from lspt_cli.plugins import get_host

    strategies = get_host().strategies
    for name, keys in STRATEGY_KEYS.items():
        if name in strategies:
            assert set(strategies.get(name).defaults) == keys, name


# -- where each value comes from (`tune --dry-run`'s "sources") ------------------------------------
def test_value_comments_read_each_lines_citation():
    from lspt_cli.recipes import value_comments

    text = '''# Source: a header, not a value
description = "a # in a string is not a comment"
[train]
lr = 0.05  # Source: README.md:83
label = "x#y"  # the comment after the string
epochs = 10
[tasks.cub.train]  # a table's own comment
lr = 0.1  # per-task table, cub
[tasks."dmlab".strategy]
num_prompts = 5 # quoted table name
'''
    assert value_comments(text) == {
        "train.lr": "Source: README.md:83",
        "train.label": "the comment after the string",
        "tasks.cub.train.lr": "per-task table, cub",
        "tasks.dmlab.strategy.num_prompts": "quoted table name",
    }


@pytest.mark.parametrize("path", [p for p in SHIPPED if load_recipe_file(p).get("train", {}).get("protocol") == "paper"],
                         ids=lambda p: p.stem)
def test_every_value_of_a_paper_recipe_is_cited(path):
    """A paper recipe says where each of its values comes from, on the value's own line (the
    comment `tune --dry-run` shows as its source)."""
    from lspt_cli.recipes import value_comments

    data, comments = load_recipe_file(path), value_comments(path.read_text())
    keys = [f"{table}.{key}" for table in ("train", "strategy") for key in data.get(table, {})]
    keys += [f"tasks.{pattern}.{table}.{key}" for pattern, override in data.get("tasks", {}).items()
             for table in ("train", "strategy") for key in override.get(table, {})]
    assert [key for key in keys if not comments.get(key)] == []


def test_resolved_sources_name_the_layer_and_its_citation(recipes, tmp_path):
    config = resolve(recipes, "gapt", "mae-vitb", "fgvc", "cars", train_overrides={"epochs": 3},
                     strategy_overrides={"dropout": 0.0})
    sources = config.sources
    assert sources["lr"].startswith("recipe gapt-mae-vitb-fgvc: Source: GaPT's paper") and sources["lr"].endswith("cars")
    assert sources["strategy.gate_init"].endswith("cars")  # the task's own line, not the recipe's default
    assert sources["epochs"] == "command line" and sources["strategy.dropout"] == "command line (--set)"
    assert sources["momentum"].startswith("recipe gapt-mae-vitb-fgvc: Source: GatedPromptTuning@dd7d1ea configs/base-prompt.yaml:15")
    assert sources["grad_clip"].startswith("paper protocol default")
    assert set(TrainConfig.__dataclass_fields__) <= set(sources)
    assert "sources" not in config.to_json()  # shown, never recorded: config.json's schema is unchanged
    own = tmp_path / "mine.toml"
    own.write_text('[train]\nlr = 0.3  # my own sweep, run 7\n')
    mine = resolve(recipes, "gapt", "mae-vitb", "fgvc", "cars", recipe_file=own)
    assert mine.sources["lr"] == f"--recipe {own}: my own sweep, run 7"


def test_dry_run_shows_the_source_of_every_value(cli):
    import json

    result = cli("tune", "--strategy", "spt-deep", "--backbone", "mae-vitb", "--task", "cub", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{"):])
    sources = doc["sources"]
    assert set(doc["train"]) <= set(sources)
    assert {f"strategy.{key}" for key in doc["strategy_options"]} <= set(sources)
    assert "README.md:83" in sources["lr"] and doc["train"]["lr"] == 0.05
    assert sources["strategy.num_prompts"].startswith("recipe spt-deep-mae-vitb-fgvc: Source: WangYZ1608/Self-Prompt-Tuning")
    assert sources["strategy.kmeans_iters"] == "strategy spt-deep's default (docs/strategies.md)"
