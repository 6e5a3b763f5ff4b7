"""The egc command line: compress, info, decompress, demo, train; one-line errors with status 2.

The subprocess tests run ``egc`` as a user does, so that anything another package writes on
stderr at import (a warning, a log line) shows up: a user mistake must print exactly one line
``egc: ...`` and exit 2, and a successful command nothing at all on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from egc_lite.cli import main
from egc_lite.data import load_image, save_image


@pytest.fixture
def image_file(tmp_path, smooth_image):
    x = smooth_image(96, 144, grid=(8, 12), seed=4)
    path = tmp_path / "in.png"
    save_image(x, path)
    return path


def test_compress_info_decompress(tmp_path, image_file, capsys):
    out = tmp_path / "a.egc"
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "guide", "--bpp", "0.2"]) == 0
    assert "bpp" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "guide" in info and "144" in info
    png = tmp_path / "b.png"
    assert main(["decompress", str(out), "-o", str(png)]) == 0
    assert load_image(png).shape == (3, 96, 144)


def test_textinv_through_cli_with_tiny_backbone(tmp_path, image_file, capsys):
    out = tmp_path / "t.egc"
    args = ["--backbone", "tiny-random", "--device", "cpu", "--no-progress"]
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "textinv", "--bpp", "0.3", "--steps", "2",
                 "--inversion-steps", "2", "--seed", "9"] + args) == 0
    assert main(["decompress", str(out), "-o", str(tmp_path / "t.png"), "--samples", "2"] + args) == 0
    assert (tmp_path / "t_0.png").exists() and (tmp_path / "t_1.png").exists()
    assert main(["info", str(out)]) == 0
    assert "seed" in capsys.readouterr().out


def test_textinv_guidance_mode_goes_into_the_header(tmp_path, image_file):
    """``--guidance-mode`` picks codec A's compression guidance (stored as ``gm``); a mode not offered is refused."""
    from egc_lite.coding.bitstream import read_bitstream
    from egc_lite.sampling.guidance import GUIDANCE_MODES

    args = ["--backbone", "tiny-random", "--device", "cpu", "--no-progress", "--bpp", "0.3", "--steps", "2", "--inversion-steps", "1"]
    modes = {}
    for mode in ("latent", "fast"):
        out = tmp_path / f"{mode}.egc"
        assert main(["compress", str(image_file), "-o", str(out), "--codec", "textinv", "--guidance-mode", mode] + args) == 0
        modes[mode] = GUIDANCE_MODES[read_bitstream(out).params["gm"]]
    assert modes == {"latent": "latent", "fast": "fast"}
    from egc_lite.cli import GUIDANCE_MODE_CHOICES

    assert set(GUIDANCE_MODE_CHOICES) == set(GUIDANCE_MODES)
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(image_file), "-o", str(tmp_path / "x.egc"), "--codec", "textinv", "--guidance-mode", "exact"] + args)
    assert exc.value.code == 2


def test_diffeic_through_cli_stores_start_step_and_eta(tmp_path, image_file, capsys):
    """Codec B with a shipped egc-tiny rate point: --start-step and --eta go into the header (info shows them)."""
    from egc_lite.coding.bitstream import read_bitstream

    args = ["--backbone", "egc-tiny", "--device", "cpu", "--no-progress"]
    out = tmp_path / "b.egc"
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "diffeic", "--quality", "1", "--steps", "3",
                 "--eta", "1"] + args) == 0
    assert read_bitstream(out).params["eta"] == 1000 and read_bitstream(out).params["start"] == 2  # the default start
    assert main(["info", str(out)]) == 0
    assert "eta" in capsys.readouterr().out
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "diffeic", "--quality", "1", "--steps", "3",
                 "--start-step", "0"] + args) == 0
    assert read_bitstream(out).params["start"] == 0 and "eta" not in read_bitstream(out).params
    assert main(["decompress", str(out), "-o", str(tmp_path / "b.png")] + args) == 0
    assert load_image(tmp_path / "b.png").shape == (3, 96, 144)


@pytest.mark.parametrize("argv, message", [
    (["compress", "{img}", "-o", "x.egc", "--codec", "diffeic", "--eta", "2"], "--eta"),
    (["info", "missing.egc"], "missing.egc"),
    (["compress", "missing.png", "-o", "x.egc"], "missing.png"),
    (["compress", "{img}", "-o", "x.egc", "--codec", "zip"], "unknown codec"),
    (["compress", "{img}", "-o", "x.egc", "--bpp", "-1"], "--bpp"),
    (["decompress", "{img}", "-o", "x.png"], "not an egc_lite file"),
])
def test_user_mistakes_are_one_line(tmp_path, image_file, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{img}", str(image_file)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_file_in_a_subprocess_exits_non_zero(tmp_path, image_file):
    out = tmp_path / "a.egc"
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "guide", "--bpp", "0.2"]) == 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x10
    out.write_bytes(bytes(data))
    env = {**os.environ, "EGC_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "egc_lite.cli", "decompress", str(out), "-o", str(tmp_path / "x.png")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("egc: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_bad_option_is_one_line_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", "x.png", "-o", "x.egc", "--bpp", "lots"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("egc: error: argument --bpp") and err.count("\n") == 1


def run_egc(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``egc ARGS`` in a fresh interpreter (the console script's code path), text output captured."""
    env = {**os.environ, "EGC_PROGRESS": "0", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "egc_lite.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


# One user mistake per command (a bad file, a missing image, a bad option, a bad parameter); {img}
# is a valid PNG, {tmp} the test's folder.
MISTAKES = {
    "no-command": [],
    "compress-missing-image": ["compress", "missing.png", "-o", "x.egc", "--codec", "guide"],
    "compress-bad-option": ["compress", "{img}", "-o", "x.egc", "--bpp", "lots"],
    "compress-unknown-codec": ["compress", "{img}", "-o", "x.egc", "--codec", "zip"],
    "decompress-not-an-egc-file": ["decompress", "{img}", "-o", "x.png"],
    "decompress-unknown-option": ["decompress", "{img}", "-o", "x.png", "--fast"],
    "info-missing-file": ["info", "missing.egc"],
    "info-not-an-egc-file": ["info", "{img}"],
    "demo-bad-image-number": ["demo", "--image", "99", "--out", "{tmp}"],
    "demo-bad-option": ["demo", "--bpp", "low"],
    "train-bad-phase": ["train", "backbone", "--phase", "everything"],
    "train-missing-parameter": ["train", "diffeic-export", "--ckpt", "{tmp}"],
}


@pytest.mark.parametrize("argv", MISTAKES.values(), ids=MISTAKES.keys())
def test_each_command_on_a_user_mistake_prints_one_line_and_exits_2(tmp_path, image_file, argv):
    argv = [a.replace("{img}", str(image_file)).replace("{tmp}", str(tmp_path)) for a in argv]
    r = run_egc(argv, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("egc: ") and r.stderr.count("\n") == 1, f"stderr is not one egc line:\n{r.stderr}"
    assert r.stdout == ""


def test_successful_commands_print_nothing_on_stderr(tmp_path, image_file):
    """guide compress, info and decompress, and codec A on a tiny model (diffusers, transformers, compressai loaded).

    The only lines a successful command may write on stderr are the kit's own ``egc: warning:``
    lines: codec A on a backbone without a fitted prior warns (an empty prior folder makes that
    happen here whatever other tests fitted), and nothing from another package may follow it.
    """
    model = ["--backbone", "tiny-random", "--device", "cpu"]
    runs = [
        (["compress", str(image_file), "-o", "g.egc", "--codec", "guide", "--bpp", "0.2"], False),
        (["info", "g.egc"], False),
        (["decompress", "g.egc", "-o", "g.png"], False),
        (["compress", str(image_file), "-o", "t.egc", "--codec", "textinv", "--bpp", "0.3", "--steps", "2",
          "--inversion-steps", "2"] + model, True),
    ]
    no_priors = {"EGC_PRIORS": str(tmp_path / "no-priors")}
    for argv, warns in runs:
        r = run_egc(argv, cwd=tmp_path, env=no_priors)
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        if warns:
            assert len(lines) == 1 and lines[0].startswith("egc: warning:") and "prior" in lines[0], r.stderr
        else:
            assert r.stderr == "", f"egc {argv[0]} wrote on stderr:\n{r.stderr}"
        assert r.stdout.strip()
    assert load_image(tmp_path / "g.png").shape == (3, 96, 144)


HEAVY = ("diffusers", "transformers", "compressai", "pyiqa", "bitsandbytes", "accelerate")


@pytest.mark.parametrize("argv, not_loaded", [
    (["--help"], HEAVY + ("torch",)),
    (["info", "{egc}"], HEAVY + ("torch",)),
    (["compress", "{img}", "-o", "{tmp}/b.egc", "--codec", "guide", "--bpp", "0.2"], HEAVY),
    (["decompress", "{egc}", "-o", "{tmp}/b.png"], HEAVY),
], ids=["help", "info", "compress-guide", "decompress-guide"])
def test_light_commands_import_only_what_they_need(tmp_path, image_file, argv, not_loaded):
    egc_file = tmp_path / "a.egc"
    assert main(["compress", str(image_file), "-o", str(egc_file), "--codec", "guide", "--bpp", "0.2"]) == 0
    argv = [a.replace("{img}", str(image_file)).replace("{egc}", str(egc_file)).replace("{tmp}", str(tmp_path)) for a in argv]
    code = ("import sys\nfrom egc_lite.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {not_loaded!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "EGC_PROGRESS": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", f"egc {argv[0]} imported heavy packages: {r.stdout}"


# ---------------------------------------------------------------- issue 11: the Stable Diffusion path's options
def test_codec_a_token_window_and_rate_share_are_command_line_options(tmp_path, image_file):
    """Fault 2: the optimized token window and the embedding's share of the byte budget can be set."""
    from egc_lite.coding.bitstream import read_bitstream

    common = ["compress", str(image_file), "--codec", "textinv", "--backbone", "tiny-random", "--device", "cpu",
              "--bpp", "0.05", "--steps", "2", "--inversion-steps", "2", "--token-start", "1", "--n-tokens", "2"]
    dq = {}
    for share in ("0.1", "0.6"):
        out = tmp_path / f"{share}.egc"
        assert main([*common, "-o", str(out), "--embedding-share", share]) == 0
        bs = read_bitstream(out)
        assert (bs.params["t0"], bs.params["nt"]) == (1, 2)
        dq[share] = bs.params["dq"]
    assert dq["0.6"] < dq["0.1"]  # a larger share of the budget: a finer quantization step


def test_prior_fitting_loads_the_backbone_on_the_device_asked_for(tmp_path, monkeypatch):
    """Fault 3: `egc train textinv-prior` loaded every backbone on the CPU whatever the machine had;
    it now takes --device (default auto, a GPU when there is one)."""
    import egc_lite.backbone as backbone_module

    seen = []

    class Stop(Exception):
        pass

    def fake_load(spec, device="auto", dtype=None):
        seen.append(str(device))
        raise Stop

    monkeypatch.setattr(backbone_module, "load_backbone", fake_load)
    with pytest.raises(Stop):
        main(["train", "textinv-prior", "--backbone", "tiny-random", "--data", str(tmp_path)])
    assert seen == ["auto"]


def test_diffeic_rate_points_from_a_folder_named_on_the_command_line(tmp_path, image_file, tiny_backbone):
    """Fault 5: compress and decompress take --weights, a folder of the user's rate points q1..q5."""
    from egc_lite.models.diffeic.config import DiffEICConfig
    from egc_lite.models.diffeic.model import DiffEICModel, save_diffeic

    model = DiffEICModel.for_backbone(DiffEICConfig(N=8, M=8), tiny_backbone, seed=0).eval()
    mine = tmp_path / "mine"
    save_diffeic(model, mine / "q2", tiny_backbone.backbone_id)
    opts = ["--backbone", "tiny-random", "--device", "cpu", "--weights", str(mine)]
    out = tmp_path / "b.egc"
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "diffeic", "--quality", "2", "--steps", "2", *opts]) == 0
    assert main(["decompress", str(out), "-o", str(tmp_path / "b.png"), *opts]) == 0
    assert load_image(tmp_path / "b.png").shape == (3, 96, 144)
