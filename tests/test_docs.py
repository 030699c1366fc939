"""Documentation checks: docstrings with (working) examples, the generated references, links and the README."""

import doctest
import inspect
import re
import shlex
from pathlib import Path

import pytest

import diffusers_evdit
from diffusers_evdit.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = sorted(diffusers_evdit.__all__)


def _doc(name):
    return inspect.getdoc(getattr(diffusers_evdit, name)) or ""


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_a_docstring_with_an_example(name):
    doc = _doc(name)
    assert doc.strip(), f"diffusers_evdit.{name} has no docstring"
    assert ">>>" in doc or "Example" in doc, f"the docstring of diffusers_evdit.{name} has no example"


SUBMODULES = ["analysis", "atomic", "data", "demo", "distill", "generation", "kd", "kernels", "layout", "masks", "metrics",
              "mlcd", "model_card", "parallel", "pipeline", "plan", "processors", "progress", "schedulers", "search",
              "tiny", "video_io"]
# owned by another change in flight (demo.py); remove from here once it has an example
PENDING: set[str] = set()  # qualified names allowed to lack an example for now


def _submodule_public():
    import importlib

    for short in SUBMODULES:
        module = importlib.import_module(f"diffusers_evdit.{short}")
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n, o in vars(module).items() if not n.startswith("_") and getattr(o, "__module__", "")
                     == module.__name__]
        for name in names:
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and _written_in_source(obj):
                yield f"{module.__name__}.{name}", obj


def _written_in_source(obj) -> bool:
    """False for classes made at run time (``EfficientVDiTPipeline.subclass_for`` registers one per base pipeline)."""
    try:
        inspect.getsource(obj)
    except (OSError, TypeError):
        return False
    return True


def test_submodule_public_functions_and_classes_have_examples():
    missing = [qualified for qualified, obj in _submodule_public() if qualified not in PENDING
               and not any(marker in (inspect.getdoc(obj) or "") for marker in (">>>", "Example"))]
    assert not missing, f"public functions / classes without an example in their docstring: {missing}"


def test_public_examples_run():
    """The ``>>>`` examples of every public function and class pass as doctests (seconds: tiny models)."""
    finder = doctest.DocTestFinder(recurse=False)
    objects = {id(getattr(diffusers_evdit, n)): (f"diffusers_evdit.{n}", getattr(diffusers_evdit, n)) for n in PUBLIC}
    for qualified, obj in _submodule_public():
        objects.setdefault(id(obj), (qualified, obj))
    failed, attempted = [], 0
    for qualified, obj in objects.values():
        module = inspect.getmodule(obj)
        for test in finder.find(obj, qualified, module=module, globs=dict(vars(module))):
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            result = runner.run(test, out=lambda text: None)
            attempted += result.attempted
            if result.failed:
                failed.append(qualified)
    assert attempted > len(objects)
    assert not failed, f"docstring examples fail for {failed}; run them with python -m doctest -v <module file>"


def test_api_reference_lists_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = [name for name in PUBLIC if f"`{name}(" not in text and f"`{name}`" not in text]
    assert not missing, f"docs/api.md misses {missing}: run python docs/generate_reference.py"


def _commands(parser, prefix="evdit"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def test_cli_reference_lists_every_command_and_flag():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = []
    for path, sub in _commands(build_parser()):
        if f"`{path}`" not in text:
            missing.append(path)
        section = text.split(f"`{path}`", 1)[-1]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help") and f"`{flag}`" not in section:
                    missing.append(f"{path} {flag}")
    assert not missing, f"docs/cli.md misses {missing}: run python docs/generate_reference.py"


def test_readme_keeps_the_ci_command_and_the_quick_start():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in readme, f"README.md must show the test command .ci/run runs, verbatim: {ci}"
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e . && evdit " in readme
    # the command the set-up line ends with exists
    setup = re.search(r"pip install torch==2\.13\.0 -e \. && (evdit [^\n`]+)", readme).group(1)
    command = shlex.split(setup)[1]
    assert command in dict((p.split()[-1], s) for p, s in _commands(build_parser()))


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md", *sorted(p.relative_to(ROOT).as_posix()
                                                                         for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_resolve(doc):
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith(("#", "mailto:")):
            continue
        file = target.split("#", 1)[0]
        if file and not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{doc}: broken links {broken}"


def test_pipeline_doc_has_no_stale_deepcopy_limitation():
    text = (ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8")
    assert "local closure" not in text and "not supported yet" not in text
