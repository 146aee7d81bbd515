"""The Python API (`import lspt`): load, load_many, wrap + save, and the mixed-task forward behind
`lspt serve`'s batching (prompted.forward_mixed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import lspt
from bundle_factory import CLASSES, SPECS, assert_same_predictions, make_bundle, make_bundles, png_bytes, tiny_vit
from conftest import mini_digits
from lspt_cli.prompted import PromptedViT, build_strategy, forward_mixed


def test_all_is_the_documented_surface():
    assert {"load", "load_many", "wrap", "PromptedModel", "MultiTaskModel"} <= set(lspt.__all__)
    assert all(hasattr(lspt, name) for name in lspt.__all__)


# -- forward_mixed: every task on its own images, one pass per block -----------------------------------
def test_forward_mixed_equals_each_model_on_its_own_images(tiny_backbone):
    torch.manual_seed(0)
    configs = [("linear", {}), ("vpt-deep", {"num_prompts": 2}), ("vpt-deep", {"num_prompts": 2}),
               ("gapt", {"num_prompts": 2}), ("lspt", {"num_prompts": 3, "lstm_dim": 8}), ("vpt-shallow", {"num_prompts": 3}),
               ("linear", {})]
    models = []
    for name, options in configs:
        model = PromptedViT(tiny_backbone, build_strategy(name, tiny_backbone.dims, options), 5).eval()
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.5)
            if getattr(model.strategy, "tau", None) is not None:
                model.strategy.tau.uniform_(0.5, 2.0)  # temperatures differ per task: per-sample q scales
        models.append(model)
    images = [torch.randn(n, 3, 32, 32) for n in (1, 3, 2, 1, 4, 2, 1)]
    with torch.no_grad():
        mixed = forward_mixed(models, images)
        alone = [m(x) for m, x in zip(models, images)]
    for a, b in zip(mixed, alone):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one image batch per model"):
        forward_mixed(models, images[:2])


# -- load / load_many -----------------------------------------------------------------------------------
@pytest.fixture
def bundles(tmp_path):
    return make_bundles(tmp_path / "bundles")


def test_load_gives_a_ready_model_equal_to_lspt_predict(bundles, tmp_path):
    from PIL import Image

    from lspt_cli.cli.predict import predict_images

    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(png_bytes(i))
        paths.append(path)
    for name in ("lin", "gapt2", "lspt3"):
        model = lspt.load(bundles[name])
        assert isinstance(model, torch.nn.Module) and not model.training and model.classes == CLASSES
        assert model.task["name"] == name and model.strategy_name == dict((n, s) for n, s, _ in SPECS)[name]
        expected = predict_images([bundles[name]], paths, top_k=3, device="cpu")[str(bundles[name])]
        by_path = model.predict(paths, top_k=3)
        by_bytes = model.predict([p.read_bytes() for p in paths], top_k=3)
        by_pil = model.predict([Image.open(p) for p in paths], top_k=3)
        by_tensor = model.predict(torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths]), top_k=3)
        assert [expected[str(p)] for p in paths] == by_path == by_bytes == by_pil == by_tensor  # same batch: exact
        assert_same_predictions(model.predict(paths[0], top_k=1), [by_path[0][:1]])  # one image: a list of one


def test_load_many_shares_one_backbone_and_equals_single_loads(bundles):
    many = lspt.load_many([bundles[n] for n, _, _ in SPECS])
    assert list(many.tasks) == [n for n, _, _ in SPECS]
    assert len({id(m.model.backbone) for m in many.tasks.values()}) == 1
    images = [png_bytes(7), png_bytes(8)]
    together = many.predict(images, top_k=2)
    for name, _, _ in SPECS:
        assert_same_predictions(together[name], lspt.load(bundles[name]).predict(images, top_k=2))
    x = many["gapt2"].preprocess(images)
    with torch.no_grad():
        logits = many(x)
        torch.testing.assert_close(logits["gapt2"], many["gapt2"](x), atol=1e-5, rtol=1e-5)
    named = lspt.load_many({"a": bundles["lin"], "b": bundles["lin"]})
    assert list(named.tasks) == ["a", "b"]
    with pytest.raises(lspt.UsageError, match="two bundles are named 'lin'"):
        lspt.load_many([bundles["lin"], bundles["lin"]])
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        many["nope"]


def test_load_refuses_another_backbone_and_bad_files(tmp_path, bundles):
    other = make_bundle(tmp_path / "other.safetensors", "vpt-deep", {"num_prompts": 2}, seed=1, vit_seed=5)
    with pytest.raises(lspt.BundleError, match="fingerprint"):
        lspt.load(other)
    assert lspt.load(other, allow_backbone_mismatch=True).classes == CLASSES
    pickle_file = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, pickle_file)
    with pytest.raises(lspt.BundleError, match="never unpickles"):
        lspt.load(pickle_file)
    with pytest.raises(lspt.BundleError, match="no such bundle file"):
        lspt.load(tmp_path / "missing.safetensors")
    with pytest.raises(lspt.UsageError, match="top_k"):
        lspt.load(bundles["lin"]).predict(png_bytes(0), top_k=0)
    with pytest.raises(lspt.LsptError, match="cannot decode image 0"):
        lspt.load(bundles["lin"]).predict(b"not an image")


# -- wrap -----------------------------------------------------------------------------------------------
def test_wrap_freezes_the_vit_and_trains_only_prompts_and_head():
    vit = tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    net = lspt.wrap(vit, "gapt", num_classes=3, num_prompts=2)
    trainable = {id(p) for p in net.trainable_parameters()}
    assert trainable == {id(p) for p in net.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in [*net.model.strategy.parameters(), *net.model.head.parameters()]}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)  # all parameters: the frozen ones get no grad
    net.train()
    assert not net.backbone.training and net.model.strategy.training
    prompts = net.model.strategy.prompts.detach().clone()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert not torch.equal(prompts, net.model.strategy.prompts)
    assert net.backbone.name.startswith("timm:")


def test_wrap_and_save_refuse_what_cannot_work(tmp_path):
    with pytest.raises(lspt.UsageError, match="needs a timm VisionTransformer"):
        lspt.wrap(torch.nn.Linear(2, 2), num_classes=2)
    with pytest.raises(lspt.UsageError, match="num_classes"):
        lspt.wrap(tiny_vit())
    with pytest.raises(lspt.LsptError, match="unknown backbone 'nope'"):
        lspt.wrap(tiny_vit(), num_classes=2, backbone="nope")
    with pytest.raises(lspt.LsptError, match="num_prompts"):
        lspt.wrap(tiny_vit(), "vpt-deep", num_classes=2, num_prompts=-1)
    net = lspt.wrap(tiny_vit(), num_classes=2, backbone="vit-tiny", num_prompts=1)
    with pytest.raises(lspt.UsageError, match="class names"):
        net.save(tmp_path / "a.safetensors")
    with pytest.raises(lspt.UsageError, match="2 class names"):
        net.save(tmp_path / "a.safetensors", classes=["x"])
    with pytest.raises(lspt.UsageError, match=r"\.safetensors"):
        net.save(tmp_path / "a.pt", classes=["x", "y"])


def test_a_wrapped_model_without_a_registered_name_loads_onto_its_own_vit(tmp_path):
    vit = tiny_vit(3)
    net = lspt.wrap(vit, "vpt-shallow", num_classes=2, classes=["no", "yes"], num_prompts=2)
    path = net.save(tmp_path / "mine.safetensors")
    again = lspt.load(path, backbone=net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net.eval()(x))
    with pytest.raises(lspt.LsptError, match="unknown backbone 'timm:"):
        lspt.load(path)


def test_wrap_handles_register_tokens_and_average_pooled_vits(tmp_path):
    """Prompts go after every prefix token (CLS + registers); an avg-pooled ViT reads out the mean."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, reg_tokens=2, num_classes=5)
    net = lspt.wrap(vit, "lspt", num_classes=3, classes=["a", "b", "c"], num_prompts=2, lstm_dim=4)
    assert net.backbone.dims.num_prefix_tokens == 3 and net.model.readout == "cls" and vit.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 3)
    again = lspt.load(net.save(tmp_path / "reg.safetensors"), backbone=net)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net.eval()(x))
    pooled = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, global_pool="avg", num_classes=0)
    with pytest.raises(lspt.UsageError, match="fc_norm"):  # none of lspt's readouts applies timm's fc_norm
        lspt.wrap(pooled, "linear", num_classes=2)
    assert lspt.wrap(pooled, "linear", num_classes=2, readout="mean-ln").model.readout == "mean-ln"


@pytest.mark.slow
def test_wrap_trains_in_a_plain_loop_and_lspt_eval_gives_the_same_accuracy(cli, tmp_path):
    """A user's loop: their data loader, their optimizer, a few steps; the saved bundle evaluates
    in `lspt eval` to exactly the accuracy the user measured on the same split."""
    from lspt_cli.data.loader import build_loader

    manifest = mini_digits("mini", n_train=64)  # its first test images are all 0s and 1s: measure on train
    net = lspt.wrap(tiny_vit(), "vpt-deep", num_classes=len(manifest.classes), backbone="vit-tiny", num_prompts=2)
    cfg = net.backbone.data_config

    def loader(split, train):
        return build_loader(manifest, split, input_size=32, mean=cfg["mean"], std=cfg["std"], train=train, batch_size=16)

    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(8):
        for images, labels in loader("train", True):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader("train", False):
            correct += int((net(images).argmax(1) == labels).sum())
            total += len(labels)
    path = net.save(tmp_path / "mine.safetensors", classes=manifest.classes, task="mini")
    result = cli("eval", str(path), "--split", "train", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == "mini" and doc["n"] == total == 64
    assert doc["top1"] == pytest.approx(100.0 * correct / total)
    from lspt_cli.bundle import read_header

    assert read_header(path).meta("lspt.precision") == "fp32"
    assert correct > 13  # it learned something (chance is 6.4 of 64)


# -- the README's "Python API" example runs as written -------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def documented_examples() -> list[tuple[str, str]]:
    """The first python block of docs/python-api.md and the one under README's "## Python API"."""
    examples = []
    page = (ROOT / "docs" / "python-api.md").read_text()
    examples.append(("docs/python-api.md", re.findall(r"```python\n(.*?)```", page, flags=re.S)[0]))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0] if "\n## Python API\n" in readme else ""
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    if blocks:
        examples.append(("README.md", blocks[0]))
    return examples


def test_the_readme_has_the_documented_example():
    sources = dict(documented_examples())
    assert sources.get("README.md") == sources["docs/python-api.md"]
    assert len(sources["README.md"].strip().splitlines()) <= 16


@pytest.mark.parametrize("source", ["docs/python-api.md", "README.md"])
def test_the_documented_example_runs(source, tmp_path, monkeypatch):
    """The example, run as written, on bundles and a photo made here (README "Python API")."""
    from PIL import Image

    code = dict(documented_examples()).get(source)
    if code is None:
        pytest.skip(f"{source} has no Python API example")
    monkeypatch.chdir(tmp_path)
    make_bundles(tmp_path, [("digits", "vpt-deep", {"num_prompts": 2}), ("letters", "gapt", {"num_prompts": 2})])
    Image.open(__import__("io").BytesIO(png_bytes(1))).save(tmp_path / "photo.png")
    exec(compile(code, source, "exec"), {})  # noqa: S102 - our own docs
    from lspt_cli.bundle import read_header

    header = read_header(tmp_path / "my-task.safetensors")
    assert header.task["classes"] == ["cat", "dog", "fox"] and header.strategy["name"] == "vpt-deep"
    assert header.backbone["name"] == "timm:vit_tiny_patch16_224"
