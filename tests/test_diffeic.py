"""DiffEIC's learned parts on a tiny random backbone: shapes, exact coding, control, save/load, training."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from egc_lite.diffeic import (
    DiffEICConfig,
    DiffEICModel,
    DiffEICTrainConfig,
    control_widths,
    export_diffeic,
    load_diffeic,
    save_diffeic,
    train_diffeic,
)
from egc_lite.entropy import likelihood_bits, update_tables
from egc_lite.errors import ModelNotFoundError, ParameterError

REPO = Path(__file__).resolve().parents[1]
TINY = DiffEICConfig(N=16, M=24)


@pytest.fixture(scope="module")
def model(tiny_backbone):
    m = DiffEICModel.for_backbone(TINY, tiny_backbone, seed=0).eval()
    with torch.no_grad():  # spread y and the hyper-latent over several integers (fresh values all round to 0)
        m.compressor.g_a2[-1].weight.mul_(60)
        m.compressor.h_a[-1].weight.mul_(40)
    update_tables(m.compressor)
    return m


@pytest.fixture(scope="module")
def batch(tiny_backbone, smooth_image):
    x = smooth_image(64, 128, grid=(8, 16), seed=2, batch=2)
    with torch.no_grad():
        return x, tiny_backbone.encode(x)


def test_shapes_and_likelihoods(model, batch):
    x, z0 = batch
    with torch.no_grad():
        c, lik = model.compressor(x, z0)
    assert c.shape == z0.shape == (2, 4, 8, 16)
    assert lik["y"].shape == (2, TINY.M, 4, 8) and lik["z"].shape == (2, TINY.N, 1, 2)
    for v in lik.values():
        assert bool(((v > 0) & (v <= 1)).all())
    with pytest.raises(ParameterError, match="z0"):
        model.compressor.analysis(x, None)


def test_control_is_zero_initialised_and_trainable(model, batch, tiny_backbone):
    x, z0 = batch
    unet = tiny_backbone.unet
    t = torch.tensor([10, 700])
    cond = tiny_backbone.null_cond.expand(2, -1, -1)
    with torch.no_grad():
        ref = unet(z0, t, encoder_hidden_states=cond).sample
        assert torch.allclose(model.predict_noise(unet, z0, t, cond, z0), ref, atol=1e-6)
    trial = DiffEICModel.for_backbone(TINY, tiny_backbone, seed=0).train()
    c, _ = trial.compressor(x, z0)
    trial.predict_noise(unet, z0, t, cond, c).pow(2).mean().backward()
    assert all(p.grad is None for p in unet.parameters())
    outs = [p for n, p in trial.control.named_parameters() if "controlnet_down_blocks" in n or "controlnet_mid_block" in n]
    assert outs and all(p.grad is not None for p in outs)
    assert any(float(p.grad.abs().sum()) > 0 for p in outs)


def test_control_width_follows_the_ratio():
    unet_cfg = {"block_out_channels": [320, 640, 1280, 1280]}
    assert control_widths(unet_cfg, 0.2, 32) == [64, 128, 256, 256]
    assert control_widths({"block_out_channels": [16, 32]}, 0.2, 8) == [8, 8]
    assert control_widths(unet_cfg, 1.0, 32) == [320, 640, 1280, 1280]
    with pytest.raises(ParameterError, match="hint"):
        DiffEICConfig(hint_channels=(16, 32)).validate()


def test_compress_decompress_is_exact(model, batch):
    x, z0 = batch
    out = model.compressor.compress(x[:1], z0[:1])
    assert set(out["strings"]) == {"y", "z"} and out["shape"] == (1, 2)
    y = model.compressor.analysis(x[:1], z0[:1])
    assert float(y.detach().abs().max()) > 3  # non-trivial symbols
    c = model.compressor.decompress(out["strings"], out["shape"])
    assert torch.equal(c, out["c"])
    with torch.no_grad():
        c_fwd, lik = model.compressor(x[:1], z0[:1])  # eval mode: rounding instead of noise
    assert torch.allclose(c, c_fwd, atol=1e-5)
    coded = 8 * sum(len(s) for s in out["strings"].values())
    assert coded < 1.5 * float(likelihood_bits(lik)) + 64
    with pytest.raises(ParameterError, match="multiples of 64"):
        model.compressor.compress(x[:1, :, :48], z0[:1, :, :6])


def test_save_load_round_trip(tmp_path, model, batch, tiny_backbone):
    x, z0 = batch
    folder = save_diffeic(model, tmp_path / "q", tiny_backbone.backbone_id)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["backbone_id"] == tiny_backbone.backbone_id and meta["config"]["N"] == TINY.N
    loaded = load_diffeic(folder, tiny_backbone)
    assert loaded.fingerprint() == model.fingerprint()
    a = model.compressor.compress(x[:1], z0[:1])
    b = loaded.compressor.compress(x[:1], z0[:1])
    assert a["strings"] == b["strings"] and torch.equal(a["c"], b["c"])
    from egc_lite.backbone import tiny_random_backbone

    with pytest.raises(ModelNotFoundError, match="backbone"):
        load_diffeic(folder, tiny_random_backbone(seed=1))
    with pytest.raises(ModelNotFoundError, match="egc train diffeic"):
        load_diffeic(tmp_path / "nothing", tiny_backbone)


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(80, 112, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(arr).save(folder / f"{i}.png")
    return folder


def test_train_resume_export_load_and_decode(tmp_path, tiny_backbone):
    from egc_lite.cli import main
    from egc_lite.codecs import CompressOptions
    from egc_lite.codecs.diffeic import DiffEICCodec

    photos = _photos(tmp_path / "photos")
    ckpt = tmp_path / "ckpt"
    common = dict(ckpt_dir=str(ckpt), data_dir=str(photos), model=DiffEICConfig(N=8, M=8, lmbda=1.0), batch_size=2,
                  crop=64, log_every=1, save_every=1)
    before = {k: v.clone() for k, v in tiny_backbone.unet.state_dict().items()}
    train_diffeic(DiffEICTrainConfig(steps=2, **common), tiny_backbone)
    assert torch.load(ckpt / "diffeic.pt", weights_only=False)["step"] == 2
    train_diffeic(DiffEICTrainConfig(steps=3, **common), tiny_backbone)  # resumes from step 2
    assert torch.load(ckpt / "diffeic.pt", weights_only=False)["step"] == 3
    log = [json.loads(line) for line in (ckpt / "diffeic_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["bpp"] > 0 and r["mse"] > 0 and r["align"] >= 0 and "aux" in r for r in log)
    assert all(torch.equal(before[k], v) for k, v in tiny_backbone.unet.state_dict().items())  # backbone frozen
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt), "--out", str(tmp_path / "q1")]) == 0
    training = json.loads((tmp_path / "q1" / "config.json").read_text())["training"]
    assert training["steps"] == 3 and training["minutes"] >= 0 and set(training["final_losses"]) >= {"loss", "bpp", "mse", "align"}
    loaded = load_diffeic(tmp_path / "q1", tiny_backbone)
    codec = DiffEICCodec(tiny_backbone, model=loaded)
    x = torch.rand(3, 64, 64)
    bs = codec.compress(x, CompressOptions(steps=2))
    y = codec.decompress(bs)
    assert y.shape == (3, 64, 64) and bool(torch.isfinite(y).all())
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt)]) == 2  # neither --out nor --quality
    with pytest.raises(ModelNotFoundError, match="checkpoint"):
        export_diffeic(tmp_path / "none", tmp_path / "out")


def test_init_from_another_rate_point(tmp_path, tiny_backbone):
    photos = _photos(tmp_path / "photos")
    common = dict(data_dir=str(photos), batch_size=2, crop=64, steps=1, log_every=1)
    src = tmp_path / "lambda1"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(src), model=DiffEICConfig(N=8, M=8, lmbda=1.0), **common), tiny_backbone)
    dst = tmp_path / "lambda8"
    cfg = DiffEICTrainConfig(ckpt_dir=str(dst), model=DiffEICConfig(N=8, M=8, lmbda=8.0), init_from=str(src), **common)
    train_diffeic(replace(cfg, steps=0), tiny_backbone)  # zero steps: the source's weights under the new lambda
    a, b = (torch.load(p / "diffeic.pt", weights_only=False) for p in (src, dst))
    assert b["step"] == 0 and b["config"]["model"]["lmbda"] == 8.0
    assert all(torch.equal(a["model"][k], v) for k, v in b["model"].items())
    wider = DiffEICTrainConfig(ckpt_dir=str(tmp_path / "wider"), model=DiffEICConfig(N=8, M=16, lmbda=8.0), init_from=str(src), **common)
    with pytest.raises(ParameterError, match="only lmbda may differ"):
        train_diffeic(wider, tiny_backbone)
    with pytest.raises(ModelNotFoundError, match="no DiffEIC checkpoint"):
        train_diffeic(DiffEICTrainConfig(ckpt_dir=str(tmp_path / "x"), model=DiffEICConfig(N=8, M=8), init_from=str(tmp_path / "none"), **common), tiny_backbone)
    # a rate point carries over to a retrained backbone of the same architecture, not to another one
    retrained = dict(a, backbone_id="retrained")
    torch.save(retrained, tmp_path / "retrained.pt")
    moved = train_diffeic(replace(cfg, ckpt_dir=str(tmp_path / "moved"), init_from=str(tmp_path / "retrained.pt"), steps=0), tiny_backbone)
    moved_state = torch.load(moved, weights_only=False)
    assert moved_state["backbone_id"] == tiny_backbone.backbone_id
    assert all(torch.equal(a["model"][k], v) for k, v in moved_state["model"].items())
    torch.save(dict(a, unet={**a["unet"], "block_out_channels": [64, 128]}), tmp_path / "other_arch.pt")
    with pytest.raises(ParameterError, match="another UNet or VAE architecture"):
        train_diffeic(replace(cfg, ckpt_dir=str(tmp_path / "y"), init_from=str(tmp_path / "other_arch.pt")), tiny_backbone)


@pytest.mark.slow
def test_decode_in_another_process_is_bit_exact(tmp_path, model, tiny_backbone):
    """A file made here decodes to the same content variables in a fresh process (compressor only:
    the subprocess imports neither diffusers nor the backbone, to stay cheap)."""
    from egc_lite.bitstream import write_bitstream
    from egc_lite.codecs import CompressOptions
    from egc_lite.codecs.diffeic import DiffEICCodec

    folder = save_diffeic(model, tmp_path / "q3", tiny_backbone.backbone_id)
    codec = DiffEICCodec(tiny_backbone, weights_dir=tmp_path)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 70, 90, generator=g)
    bs = codec.compress(x, CompressOptions(quality=3, steps=2))
    write_bitstream(tmp_path / "a.egc", bs)
    c_here = codec.content_variables(bs)
    code = f"""
        import torch
        torch.set_num_threads(2)
        from egc_lite.bitstream import read_bitstream
        from egc_lite.diffeic import load_compressor
        comp = load_compressor({str(folder)!r})
        bs = read_bitstream({str(tmp_path / 'a.egc')!r})
        shape = (-(-bs.height // 64), -(-bs.width // 64))
        torch.save(comp.decompress(bs.sections, shape), {str(tmp_path / 'c.pt')!r})
    """
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin", "EGC_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "c.pt"), c_here)


# ---------------------------------------------------------------- issue 11, faults 5 and 7
def test_export_by_quality_leaves_the_shipped_rate_points_alone(tmp_path, tiny_backbone, monkeypatch):
    """Fault 5: `egc train diffeic-export --quality N` overwrote the package's weights/diffeic/qN (egc-tiny's
    shipped points, whatever backbone the checkpoint was trained on); it now writes <root>/<backbone id>/qN."""
    import hashlib

    import egc_lite.codecs.diffeic as codec_b
    from egc_lite.cli import main

    monkeypatch.setenv("EGC_DIFFEIC_WEIGHTS", str(tmp_path / "points"))
    # a stand-in for the package's shipped points, so that a regression overwrites nothing in the checkout
    DIFFEIC_WEIGHTS = tmp_path / "shipped"
    for q in (1, 3, 5):
        (DIFFEIC_WEIGHTS / f"q{q}").mkdir(parents=True)
        (DIFFEIC_WEIGHTS / f"q{q}" / "config.json").write_text('{"backbone_id": "shipped"}')
        (DIFFEIC_WEIGHTS / f"q{q}" / "model.safetensors").write_bytes(b"shipped weights")
    monkeypatch.setattr(codec_b, "DIFFEIC_WEIGHTS", DIFFEIC_WEIGHTS)
    ckpt = tmp_path / "ckpt"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(ckpt), data_dir=str(_photos(tmp_path / "photos")),
                                     model=DiffEICConfig(N=8, M=8, lmbda=4.0), steps=1, batch_size=1, crop=64), tiny_backbone)

    def shipped() -> dict:
        return {str(p.relative_to(DIFFEIC_WEIGHTS)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(DIFFEIC_WEIGHTS.rglob("*")) if p.is_file()}

    before = shipped()
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt), "--quality", "3"]) == 0
    assert shipped() == before
    assert (tmp_path / "points" / tiny_backbone.backbone_id / "q3" / "config.json").is_file()


def test_training_creates_the_accelerator_before_it_loads_the_backbone(tmp_path, monkeypatch):
    """Fault 7: the backbone was loaded (on `cuda`, i.e. cuda:0 on every rank) before the Accelerator existed;
    now the Accelerator comes first and the backbone is loaded on its device (this rank's GPU)."""
    import accelerate

    import egc_lite.backbone as backbone_module
    from egc_lite.cli import main

    events = []

    class Stop(Exception):
        pass

    class FakeAccelerator:
        device = torch.device("cpu")  # stands for this rank's device
        process_index = 0

        def __init__(self, *args, **kwargs):
            events.append("accelerator")

    def fake_load(spec, device="auto", dtype=None):
        events.append(("load", str(device)))
        raise Stop

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    monkeypatch.setattr(backbone_module, "load_backbone", fake_load)
    with pytest.raises(Stop):
        main(["train", "diffeic", "--lmbda", "1", "--backbone", "tiny-random", "--ckpt", str(tmp_path / "ckpt"),
              "--data", str(tmp_path), "--steps", "1"])
    assert events == ["accelerator", ("load", "cpu")]
