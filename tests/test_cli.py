import json
import os

import pytest

from diffusers_evdit.cli import main


def test_plan_uniform_and_show(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["plan", "uniform", "--layers", "3", "--k", "1", "--out", str(path)]) == 0
    assert json.loads(path.read_text())["layers"] == [1, 1, 1]
    assert main(["plan", "show", str(path), "--frames", "8", "--tokens-per-frame", "16"]) == 0
    out = capsys.readouterr().out
    assert "1:7" in out and "65.6%" in out  # 1 - (8 + 7 * 2) / 64


def test_bad_plan_file_is_an_error_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text('{"version": 99, "layers": [1]}')
    assert main(["plan", "show", str(path)]) == 2
    assert "newer" in capsys.readouterr().err


@pytest.mark.parametrize("argv, minimum", [
    (["generate", "--model", "unused", "--prompt", "x", "--steps", "0", "--out", "a.gif"], 1),
    (["generate", "--model", "unused", "--prompt", "x", "--frames", "-1", "--out", "a.gif"], 1),
    (["generate", "--model", "unused", "--prompt", "x", "--cp", "0", "--out", "a.gif"], 1),
    (["demo", "--out", "unused", "--steps", "0"], 1),
    (["demo", "--out", "unused", "--threads", "-1"], 0),
    (["smoke", "--frames", "0"], 1),
    (["plan", "uniform", "--layers", "2", "--k", "0", "--out", "unused.json"], 1),
    (["plan", "show", "unused.json", "--text", "-1"], 0),
    (["bench", "kernels", "--rounds", "0"], 1),
    (["eval", "--model", "unused", "--prompts", "two", "--json", "unused.json"], 1),
    (["search", "--model", "unused", "--threshold", "0.1", "--refine-rounds", "-2"], 0),
])
def test_counts_out_of_range_are_usage_errors_naming_the_flag(argv, minimum, capsys):
    # before any model is loaded or file written: argparse exits with status 2 and names the flag and the value
    flag, value = next((a, b) for a, b in zip(argv, argv[1:]) if b in ("0", "-1", "-2", "two"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected an integer >= {minimum}, got '{value}'" in err


def test_smoke_runs(capsys):
    assert main(["smoke", "--frames", "4", "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert "kernels agree: yes" in out and "FlashAttention-4: " in out


def _subcommands():
    """Every leaf command of the parser, as argument lists (``["plan", "show"]``, ...)."""
    import argparse

    from diffusers_evdit.cli import build_parser

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prefix
            return
        for name, child in subs[0].choices.items():
            yield from walk(child, prefix + [name])

    return list(walk(build_parser(), []))


def test_every_subcommand_takes_quiet_and_verbose(capsys):
    commands = _subcommands()
    assert ["generate"] in commands and ["plan", "show"] in commands and len(commands) >= 9
    for cmd in commands:
        with pytest.raises(SystemExit) as exit_info:
            main(cmd + ["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "--quiet" in text and "--verbose" in text, cmd


def test_quiet_plan_show_still_prints_the_result(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["plan", "uniform", "--layers", "2", "--k", "1", "--out", str(path), "-q"]) == 0
    assert main(["plan", "show", str(path), "--quiet"]) == 0
    assert "2 layers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["plan", "show", str(path), "--quiet", "--verbose"])  # exclusive


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny Wan pipeline folder whose generation defaults are 9 frames of 32x48, 2 steps, guidance 3, 5 fps."""
    from diffusers_evdit import EfficientVDiTPipeline, MaskPlan
    from diffusers_evdit.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny") / "model"
    pipe = EfficientVDiTPipeline.from_pipe(tiny_pipeline("wan"), mask_plan=MaskPlan.uniform(2, k=1))
    pipe.set_generation_defaults(num_frames=9, height=32, width=48, num_inference_steps=2, guidance_scale=3.0, fps=5)
    pipe.save_pretrained(folder)
    return folder


def _decode(path):
    import imageio.v2 as imageio

    reader = imageio.get_reader(path, "ffmpeg")
    frames = [frame for frame in reader]
    fps = reader.get_meta_data()["fps"]
    reader.close()
    return frames, fps


def test_generate_uses_the_model_defaults_and_flags_override(tiny_model, tmp_path, capsys):
    out = tmp_path / "a.mp4"
    assert main(["generate", "--model", str(tiny_model), "--prompt", "a red circle", "--seed", "0",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "num_frames=9 (model default)" in printed and "num_inference_steps=2 (model default)" in printed
    assert "guidance_scale=3.0 (model default)" in printed and "fps=5 (model default)" in printed
    assert "2 steps x 2 = 4 transformer calls" in printed  # classifier-free guidance: two calls a step
    frames, fps = _decode(out)
    assert len(frames) == 9 and frames[0].shape == (32, 48, 3) and fps == 5

    out = tmp_path / "b.mp4"
    assert main(["generate", "--model", str(tiny_model), "--prompt", "a red circle", "--frames", "5",
                 "--height", "16", "--fps", "4", "--out", str(out), "--verbose"]) == 0
    captured = capsys.readouterr()
    assert "num_frames=5 (flag)" in captured.out and "width=48 (model default)" in captured.out
    assert "step 1:" in captured.err and "step 2:" in captured.err  # --verbose: every step's time
    frames, fps = _decode(out)
    assert len(frames) == 5 and frames[0].shape == (16, 48, 3) and fps == 4

    folder = tmp_path / "frames"
    assert main(["generate", "--model", str(tiny_model), "--prompt", "x", "--out", str(folder) + "/", "-q"]) == 0
    captured = capsys.readouterr()
    assert sorted(os.listdir(folder))[:2] == ["frame_00000.png", "frame_00001.png"] and len(os.listdir(folder)) == 9
    assert captured.out.strip().splitlines() == [f"wrote {folder}/ (9 frames of 48x32, 5 fps)"]
    assert captured.err == ""


def test_generate_decodes_wan_videos_on_the_cpu_like_the_pipeline(tiny_model):
    """On a CPU `evdit generate` decodes a Wan pipeline's latents itself (faster); the frames are the pipeline's own."""
    import numpy as np
    import torch

    from diffusers_evdit import EfficientVDiTPipeline
    from diffusers_evdit.commands.generate import generate_frames

    pipe = EfficientVDiTPipeline.from_pretrained(str(tiny_model))
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="a red circle", num_frames=9, height=32, width=48, num_inference_steps=2, guidance_scale=3.0,
                output_type="pil")
    ref = pipe(**call, generator=torch.Generator().manual_seed(0)).frames[0]  # diffusers' own decoding
    convs = [m for m in pipe.vae.modules() if isinstance(m, torch.nn.Conv3d)]
    assert not all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)
    frames = generate_frames(pipe, {**call, "generator": torch.Generator().manual_seed(0)})
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)  # decoded by the package
    assert len(frames) == len(ref) == 9 and frames[0].size == ref[0].size == (48, 32)
    got, want = (np.stack([np.asarray(f, np.int16) for f in video]) for video in (frames, ref))
    assert np.abs(got - want).max() <= 1


def test_generate_warns_far_outside_the_model_and_when_long(tiny_model, tmp_path, capsys, monkeypatch):
    from diffusers_evdit.commands import generate

    monkeypatch.setattr(generate, "LONG_RUN_S", 0.0)
    assert main(["generate", "--model", str(tiny_model), "--prompt", "x", "--frames", "25", "--height", "64",
                 "--width", "96", "--steps", "1", "--out", str(tmp_path / "a.gif")]) == 0
    err = capsys.readouterr().err
    assert "evdit: warning:" in err and "model's own size (9 frames, 32x48" in err
    assert "Change --frames/--height/--width" in err
    assert "Lower --steps/--frames/--height/--width" in err


def test_eval_log_stays_short(tmp_path):
    """``evdit eval ... > log 2>&1``: no bar fragments, a bounded number of progress lines whatever the prompt count."""
    import subprocess
    import sys

    log = tmp_path / "log"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "diffusers_evdit.cli", "eval", "--model", "tiny", "--prompts", "3",
                        "--json", str(tmp_path / "out.json")], stdout=f, stderr=subprocess.STDOUT, check=True,
                       env=env, cwd=tmp_path)
    text = log.read_text()
    assert "\r" not in text  # no tqdm bar redraws
    lines = text.splitlines()
    progress = [line for line in lines if line.startswith("eval: 3 videos:")]
    assert progress and progress[-1].startswith("eval: 3 videos: 24/24 transformer calls (100%)")
    # at most Progress.max_lines (30) progress lines, plus the header, the 10-line table and "wrote"
    assert len(lines) <= 30 + 12 and json.loads((tmp_path / "out.json").read_text())["num_videos"] == 3


def test_output_cut_short_by_the_reader_ends_quietly(tmp_path):
    # `evdit plan show ... | head -n 1`: the pipe closes under the printing command; no traceback, SIGPIPE's status
    import subprocess
    import sys

    path = tmp_path / "plan.json"
    assert main(["plan", "uniform", "--layers", "3000", "--k", "1", "--out", str(path)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "diffusers_evdit.cli", "plan", "show", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(str(path).encode())
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert b"Traceback" not in proc.stderr.read()


def test_generate_model_reference_resolves_the_demo_model_and_refuses_a_mistyped_folder(tmp_path, capsys):
    from diffusers_evdit.commands.generate import model_reference
    from diffusers_evdit.demo.model import DEMO_MODEL_DIR

    (tmp_path / "my_model").mkdir()
    assert model_reference(str(tmp_path / "my_model")) == str(tmp_path / "my_model")
    assert model_reference("THUDM/CogVideoX-5b") == "THUDM/CogVideoX-5b"  # a Hub id is left to from_pretrained
    if os.path.isfile(os.path.join(DEMO_MODEL_DIR, "model_index.json")):  # a checkout with the trained demo model
        assert model_reference(None) == model_reference("default") == DEMO_MODEL_DIR
        assert model_reference("default/evdit") == os.path.join(DEMO_MODEL_DIR, "evdit")
        with pytest.raises(FileNotFoundError, match="its students: default/evdit, default/mlcd"):
            model_reference("default/evdt")
    # a typo under a local folder fails at once, naming the close folder, before any Hub request
    typo = str(tmp_path / "my_modle")
    assert main(["generate", "--model", typo, "--prompt", "x", "--out", str(tmp_path / "a.gif")]) == 2
    assert f"Did you mean '{tmp_path / 'my_model'}'" in capsys.readouterr().err
