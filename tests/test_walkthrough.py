"""A newcomer's first hour, scripted: the README's shell commands, ``evdit <cmd> --help`` for every subcommand, and a
first video from the shipped demo model at its own defaults (CPU; the whole file runs in about a minute).

Expensive README commands (a GPU search, a Hub download, the full test suite, 16-prompt eval) are parsed against the
CLI but not run; their cheap counterparts run on the tiny random pipelines.
"""

import os
import re
import resource
import shlex
import subprocess
import sys
import sysconfig
import time

import pytest

from diffusers_evdit.cli import build_parser, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DEMO_MODEL = os.path.join(ROOT, "diffusers_evdit", "demo_model")


def readme_shell_blocks() -> list[str]:
    """The README's fenced ``bash`` blocks and its plain ``` blocks of evdit commands, one string each."""
    text = open(README, encoding="utf-8").read()
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if lang in ("bash", "")]


def _commands_in(lines) -> list[list[str]]:
    commands = []
    for line in lines:
        for part in line.split("&&"):
            part = part.split("  #")[0].strip()
            if part.startswith("evdit "):
                commands.append(shlex.split(part)[1:])
    return commands


def readme_evdit_commands() -> list[list[str]]:
    """Every ``evdit ...`` command line of the README's code blocks, as argv without ``evdit``."""
    return _commands_in(line for block in readme_shell_blocks() for line in block.splitlines())


def readme_inline_mentions() -> list[list[str]]:
    """``evdit ...`` in the README's inline code (prose: may leave out required flags)."""
    return _commands_in(re.findall(r"`(evdit [^`]+)`", open(README, encoding="utf-8").read()))


def _leaf(parser, argv):
    """The (sub)parser an argv ends in, and the rest of the argv."""
    import argparse

    while argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or argv[0] not in subs[0].choices:
            break
        parser, argv = subs[0].choices[argv[0]], argv[1:]
    return parser, argv


def c_flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def test_every_readme_evdit_command_parses():
    commands = readme_evdit_commands()
    assert {"smoke", "demo", "generate", "profile", "search", "eval", "plan", "bench"} <= {c[0] for c in commands}
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # SystemExit(2) on an unknown flag or a missing required one
    for argv in readme_inline_mentions():  # prose: the command exists and every flag it names is one of its own
        leaf, rest = _leaf(parser, argv)
        assert leaf is not parser, argv
        known = {s for a in leaf._actions for s in a.option_strings}
        assert set(c_flags(rest)) <= known, (argv, set(c_flags(rest)) - known)


def test_help_of_every_subcommand(capsys):
    """``evdit --help`` lists every command, each ``--help`` has a one-line summary, flags with help and the output
    flags."""
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    commands = ["smoke", "generate", "demo", "eval", "profile", "search", "plan", "bench"]
    assert all(name in top for name in commands)
    for argv in (["smoke"], ["generate"], ["demo"], ["eval"], ["profile"], ["search"], ["plan", "uniform"],
                 ["plan", "show"], ["bench", "kernels"], ["bench", "step"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: evdit " + " ".join(argv)) and "--quiet" in text and "--verbose" in text
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "generation_defaults.json" in text and ".mp4" in text  # where the defaults come from, what --out takes


def test_quick_start_in_a_fresh_virtual_environment(tmp_path):
    """The README's first command: make a venv, ``pip install torch==2.13.0 -e .``, ``evdit smoke``.

    The venv sees this interpreter's packages (a ``.pth`` file) instead of downloading torch again; pip runs offline
    when this interpreter has the build backend, else it fetches only that.
    """
    (block,) = [b for b in readme_shell_blocks() if "python3 -m venv" in b]
    assert "pip install torch==2.13.0 -e ." in block and block.strip().endswith("evdit smoke")
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "_walkthrough_parent.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "torch==2.13.0", "-e", ROOT]
    offline = subprocess.run(install[:-3] + ["--no-index", "--no-build-isolation"] + install[-3:], cwd=tmp_path,
                             capture_output=True, text=True)
    if offline.returncode != 0:  # this interpreter lacks a build backend (setuptools>=68, wheel): pip fetches it
        subprocess.run(install, check=True, cwd=tmp_path)
    evdit = venv / "bin" / "evdit"
    assert evdit.exists()  # the console script of pyproject.toml
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(evdit), "smoke"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kernels agree: yes" in result.stdout


def test_first_video_from_the_demo_model_at_its_defaults(tmp_path):
    """``evdit generate --model diffusers_evdit/demo_model --prompt "..." --out a.mp4`` with no other flag: a playable
    MP4 at the model's own defaults (29 frames of 128x128, 8 fps), in under a minute on a 2-core CPU (checked under
    CI, where the machine runs nothing else)."""
    if not os.path.isfile(os.path.join(DEMO_MODEL, "model_index.json")):
        pytest.skip("the trained demo model is not in this checkout")
    import imageio.v2 as imageio

    line = next(c for c in readme_evdit_commands() if c[:3] == ["generate", "--model", "diffusers_evdit/demo_model"])
    assert c_flags(line) == ["--model", "--prompt", "--out"] and line[-1] == "a.mp4"  # no other flag
    log = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "diffusers_evdit.cli", *line[:2], DEMO_MODEL, *line[3:]],
                              stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=env).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "num_frames=29 (model default)" in text and "height=128 (model default)" in text
    assert "num_inference_steps=20 (model default)" in text and "guidance_scale=4.0 (model default)" in text
    assert "20 steps x 2 = 40 transformer calls" in text and "warning" not in text
    assert "\r" not in text and len(text.splitlines()) < 40  # a log, not bar fragments

    reader = imageio.get_reader(str(tmp_path / "a.mp4"), "ffmpeg")
    frames = [frame for frame in reader]
    assert reader.get_meta_data()["fps"] == 8
    reader.close()
    assert len(frames) == 29 and frames[0].shape == (128, 128, 3)
    assert max(float(f.std()) for f in frames) > 1.0  # a picture, not a blank

    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"evdit generate at the demo model's defaults: {wall:.1f} s wall, {cpu:.1f} s CPU")
    if os.environ.get("CI"):
        assert wall < 60, f"took {wall:.0f} s (CPU {cpu:.0f} s); the README promises under a minute"
    else:  # a shared development machine: only a loose bound
        assert wall < 600


def test_demo_and_eval_round_on_the_tiny_pipeline(tmp_path, capsys):
    """The README's ``evdit demo --out demo/ --model tiny``, and ``evdit eval`` on the same random pipeline."""
    assert ["demo", "--out", "demo/", "--model", "tiny"] in readme_inline_mentions()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--model", "tiny", "--prompts", "1", "--steps", "2"]) == 0
    assert sorted(os.listdir(tmp_path / "demo")) == ["contact_sheet.png", "report.json", "report.md",
                                                      "side_by_side.gif"]
    assert main(["eval", "--model", "tiny", "--prompts", "1", "--steps", "2", "--json", str(tmp_path / "e.json"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "final_score" in out and "evaluating" not in out  # --quiet: the result table only
