"""The memory a run needs, said before it starts (lspt_cli/engine/memory_estimate.py): the estimate's
shape (linear in the batch, quadratic in the tokens where attention keeps its scores, smaller with
gradient checkpointing), the line and the warning `lspt tune` prints, and the estimate against a
measured peak."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from lspt_cli.engine import memory_estimate as me

VIT_B = me.ModelShape(embed_dim=768, depth=12, num_heads=12, num_patches=196)
VIT_L = me.ModelShape(embed_dim=1024, depth=24, num_heads=16, num_patches=196)
GIB = 2**30


def train_bytes(shape, **kwargs):
    kwargs.setdefault("strategy_params", 1000)
    return me.estimate(shape, **kwargs).train_activation_bytes


@pytest.mark.slow  # importing timm and building two models on the meta device: 5-13 s on the shared machine
def test_backbone_params_match_timm():
    """The formula counts what timm builds (heads removed): ViT-B/16 85.8M, ViT-L/16 303.3M."""
    timm = pytest.importorskip("timm")
    import torch

    for shape, name in ((VIT_B, "vit_base_patch16_224"), (VIT_L, "vit_large_patch16_224")):
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        assert shape.backbone_params() == sum(p.numel() for p in model.parameters())
        assert me.shape_from_model(model) == shape


def test_linear_in_batch():
    for checkpointed in (False, True):
        one = train_bytes(VIT_B, batch=8, grad_checkpointing=checkpointed)
        assert train_bytes(VIT_B, batch=16, grad_checkpointing=checkpointed) == pytest.approx(2 * one, rel=1e-9)
        assert train_bytes(VIT_B, batch=64, grad_checkpointing=checkpointed) == pytest.approx(8 * one, rel=1e-9)


def test_attention_scores_grow_with_the_square_of_the_tokens():
    """The explicit attention path keeps [B, heads, T, T]; doubling T multiplies that part by 4,
    while the fused kernel's estimate grows only about linearly."""
    def scores_part(patches):
        shape = me.ModelShape(embed_dim=768, depth=12, num_heads=12, num_patches=patches, num_prefix_tokens=0)
        return (train_bytes(shape, batch=8, fused_attention=False) - train_bytes(shape, batch=8, fused_attention=True),
                train_bytes(shape, batch=8, fused_attention=True))

    math_1, fused_1 = scores_part(196)
    math_2, fused_2 = scores_part(392)
    assert math_2 / math_1 == pytest.approx(4.0, rel=1e-6)
    assert fused_2 / fused_1 == pytest.approx(2.0, rel=0.01)


def test_grad_checkpointing_keeps_one_block_input_per_block():
    plain = train_bytes(VIT_L, batch=64)
    checkpointed = train_bytes(VIT_L, batch=64, grad_checkpointing=True)
    assert checkpointed < plain / 3  # 24 blocks: one input each instead of ~10 tensors of that size
    # a linear probe sends no gradient through the blocks: nothing is kept, checkpointing or not
    probe = train_bytes(VIT_L, batch=64, strategy_params=0)
    assert probe < checkpointed and probe == train_bytes(VIT_L, batch=64, strategy_params=0, grad_checkpointing=True)


def test_bf16_keeps_less_than_fp32():
    assert train_bytes(VIT_B, batch=8, precision="bf16") < 0.75 * train_bytes(VIT_B, batch=8)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        me.estimate(VIT_B, batch=8, precision="fp16")


def test_shape_from_spec_and_tokens():
    from lspt_cli.specs import BackboneSpec

    spec = BackboneSpec(name="x", description="", factory="m:f", embed_dim=1024, depth=24)
    shape = me.shape_from_spec(spec)
    assert (shape.num_heads, shape.num_patches, shape.tokens(50)) == (16, 196, 247)
    assert me.shape_from_spec(spec, image_size=448).num_patches == 784


def test_advice_suggests_checkpointing_then_a_smaller_batch():
    est = me.estimate(VIT_L, batch=64, strategy_params=1000)
    assert me.advice(VIT_L, est, (10 * est.total_bytes, "free")) == []
    roomy = (int(est.total_bytes * 0.6), "free")  # checkpointing fits in it
    lines = me.advice(VIT_L, est, roomy)
    assert len(lines) == 2 and "--grad-checkpointing" in lines[1] and "(fits)" in lines[1]
    tight = (2 * GIB, "free")  # even checkpointed batch 64 does not fit: name a batch that does
    lines = me.advice(VIT_L, est, tight)
    batch = int(lines[2].split("--batch-size ")[1].split()[0])
    assert 1 <= batch < 64
    fits = me.estimate(VIT_L, batch=batch, strategy_params=1000, grad_checkpointing=True, eval_batch=batch)
    bigger = me.estimate(VIT_L, batch=batch + 1, strategy_params=1000, grad_checkpointing=True, eval_batch=batch + 1)
    assert fits.total_bytes <= me.FIT_FRACTION * tight[0] < bigger.total_bytes
    assert "even batch 1" in me.advice(VIT_L, est, (GIB // 4, "free"))[-1]


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\n")
    assert me.meminfo_available(str(meminfo)) == 2000000 * 1024
    assert me.meminfo_available(str(tmp_path / "missing")) is None
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert me.cgroup_available(str(tmp_path)) == 600000
    (tmp_path / "memory.max").write_text("max\n")
    assert me.cgroup_available(str(tmp_path)) is None
    free = me.available_memory("cpu")
    assert free is None or free[0] > 0


def test_tune_says_what_the_backbone_needs(cli, monkeypatch):
    """One line before the run, in --dry-run too, and the same figures in its JSON."""
    monkeypatch.setattr(me, "available_memory", lambda device: (64 * GIB, "free (test)"))
    result = cli("tune", "--backbone", "mae-vitb", "--task", "digits", "--strategy", "vpt-deep", "--batch-size", "64",
                 "--amp", "off", "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stderr.splitlines() if x.startswith("backbone mae-vitb:"))
    memory = result.json["memory"]
    est = memory["estimate"]
    assert line == memory["line"]
    assert "86M params (frozen)" in line and f"{est['tokens']} tokens/image" in line and "at batch 64 (fp32)" in line
    assert est["tokens"] == 1 + result.json["strategy_options"]["num_prompts"] + 196
    assert "of 64.0 GiB free (test)" in line and memory["warnings"] == [] and "Warning: the estimate" not in result.stderr


@pytest.mark.slow  # trains one epoch: about 6 s
def test_a_real_run_says_it_before_training_and_still_trains(cli, monkeypatch, fake_task, tmp_path):
    """The line comes before "Run directory:"; a warning does not stop the run; a refused run
    (a task that is not prepared) shows its Error: alone."""
    monkeypatch.setattr(me, "available_memory", lambda device: (1024, "free (test)"))
    args = ("--backbone", "vit-tiny", "--strategy", "vpt-shallow", "--set", "num_prompts=2", "--epochs", "1",
            "--warmup-epochs", "0", "--batch-size", "8", "--device", "cpu")
    result = cli("tune", "--task", fake_task, *args, "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    line = next(i for i, x in enumerate(lines) if x.startswith("backbone vit-tiny: "))
    assert lines[line + 1].startswith("Warning: the estimate") and "even batch 1 does not fit" in result.stderr
    assert line < next(i for i, x in enumerate(lines) if x.startswith("Run directory:"))
    assert (tmp_path / "run" / "bundle.safetensors").is_file()
    missing = cli("tune", "--task", "cub", *args)
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: task 'cub' is not prepared")


def test_tune_sizes_img_size_and_timm_models(cli, monkeypatch):
    """--img-size changes the tokens; a `timm/<model>` is sized from timm's model on the meta device."""
    monkeypatch.setattr(me, "available_memory", lambda device: (64 * GIB, "free (test)"))
    result = cli("tune", "--backbone", "mae-vitb", "--task", "digits", "--strategy", "vpt-deep", "--img-size", "448",
                 "--amp", "off", "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    prompts = result.json["strategy_options"]["num_prompts"]
    assert result.json["memory"]["estimate"]["tokens"] == 1 + prompts + 28 * 28
    result = cli("tune", "--backbone", "timm/vit_large_patch16_224", "--task", "digits", "--strategy", "vpt-deep",
                 "--amp", "off", "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    memory = result.json["memory"]
    assert memory["estimate"]["backbone_params"] == VIT_L.backbone_params() and "303M params" in memory["line"]
    assert memory["estimate"]["tokens"] == 1 + prompts + 196


def test_tune_warns_when_it_will_not_fit(cli, monkeypatch):
    """A small 'available memory' gives the --grad-checkpointing suggestion (and a batch), in the
    text and in the JSON; the run is never refused for it."""
    monkeypatch.setattr(me, "available_memory", lambda device: (2 * GIB, "free (test)"))
    result = cli("tune", "--backbone", "mae-vitb", "--task", "digits", "--strategy", "vpt-deep", "--batch-size", "256",
                 "--amp", "off", "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    warnings = result.json["memory"]["warnings"]
    assert "Warning: the estimate" in result.stderr and "--grad-checkpointing" in result.stderr
    assert any("try --grad-checkpointing" in w for w in warnings) and any("--batch-size" in w for w in warnings)
    for text in warnings:
        assert text in result.stderr
    # with checkpointing on, the suggestion is a smaller batch only
    result = cli("tune", "--backbone", "mae-vitb", "--task", "digits", "--strategy", "vpt-deep", "--batch-size", "256",
                 "--amp", "off", "--device", "cpu", "--grad-checkpointing", "--dry-run")
    warnings = result.json["memory"]["warnings"]
    assert result.exit_code == 0 and "grad checkpointing" in result.json["memory"]["line"]
    assert not any("try --grad-checkpointing" in w for w in warnings) and "--batch-size" in warnings[-1]
    # -q says nothing; the JSON still has it
    result = cli("tune", "--backbone", "mae-vitb", "--task", "digits", "--batch-size", "256", "--device", "cpu",
                 "--dry-run", "-q")
    assert result.exit_code == 0 and "backbone mae-vitb" not in result.stderr and result.json["memory"]["warnings"]


# The measured check: one training step of vpt-deep on a small ViT at a real token count, its peak
# RSS above the level before the step (sampled as benchmarks/train_step.py samples it), with glibc's
# mmap threshold fixed at 64 KiB so that freed tensors leave the RSS at once: the peak is then the
# peak of live tensors, which is what the estimate counts. Tolerance: 15% (measured: 0-7%).
# One process measures every config in turn (importing torch and timm costs more than the steps);
# each config's model and tensors are freed before the next, and each peak is taken above the RSS
# just before its own step.
MEASURE = textwrap.dedent("""
    import ctypes, json, os, sys, threading, time
    ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD: fixed, so free() unmaps
    import torch
    import torch.nn.functional as F
    from timm.models.vision_transformer import VisionTransformer
    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.engine import memory_estimate as me
    from lspt_cli.prompted import PromptedViT, build_strategy

    torch.set_num_threads(1)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def measure(dim, heads, batch, checkpointed):
        torch.manual_seed(0)
        vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=dim, depth=4, num_heads=heads, num_classes=0)
        backbone = FrozenBackbone(vit, "small")
        model = PromptedViT(backbone, build_strategy("vpt-deep", backbone.dims, {"num_prompts": 10}), 10).train()
        model.grad_checkpointing = checkpointed
        images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 10, (batch,))
        opt = torch.optim.SGD(model.trainable_parameters(), lr=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            opt.step()

        step(); step()
        peaks = []
        for _ in range(2):
            base = rss()
            peak, stop = [base], threading.Event()

            def watch():
                while not stop.is_set():
                    peak[0] = max(peak[0], rss())
                    time.sleep(0.0005)

            thread = threading.Thread(target=watch)
            thread.start()
            step()
            stop.set()
            thread.join()
            peaks.append(max(peak[0], rss()) - base)
        strategy_params = sum(p.numel() for p in model.strategy.parameters())
        est = me.estimate(me.shape_from_model(vit), batch=batch, num_prompts=10, grad_checkpointing=checkpointed,
                          strategy_params=strategy_params)
        return {"measured": min(peaks), "estimate": est.train_activation_bytes}

    print(json.dumps([measure(*config) for config in json.loads(sys.argv[1])]))
""")


CONFIGS = [(192, 3, 16, False), (192, 3, 16, True), (384, 6, 8, False)]  # dim, heads, batch, checkpointed


@pytest.mark.slow
def test_estimate_against_measured_peak():
    """Each config, measured in turn by one MEASURE process (one test, so `pytest -n` never splits
    the configs across workers nor makes one wait for the other's process)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the peak is read from /proc/self/statm and glibc's mallopt")
    run = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(CONFIGS)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert len(results) == len(CONFIGS)
    for config, result in zip(CONFIGS, results):
        assert result["estimate"] == pytest.approx(result["measured"], rel=0.15), (config, result)
