"""Every shell command in README.md (and the command blocks of ARCHITECTURE.md and CONTRIBUTING.md) works when
pasted into bash.

Running them for real would need the real backbone (minutes), so each
command is checked as far as is cheap: bash parses it; no unquoted ``<`` or
``>`` turns an argument such as ``<SMILES>`` into a redirection; a
``tagllm_core`` command is accepted by the real CLI parser (and its
``--input`` slot specs by the CLI's own spec parser); a ``make`` target
exists in the Makefile; files it names in the checkout (``assets/``, the package data under
``tagllm_core/data/``) exist, with the columns it maps.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tagllm_core.cli import build_parser, parse_input_spec

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "docs" / "ARCHITECTURE.md", REPO / "CONTRIBUTING.md"]
_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
_SHELL = {"", "bash", "sh", "shell", "console"}
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_REPO_FILES = ("assets/", "tagllm_core/data/")  # arguments that name files in the checkout


def shell_commands(text: str) -> list[str]:
    """Logical commands of the shell code blocks in markdown ``text``: continuation lines joined,
    blank lines and whole-line comments dropped, block indentation removed."""
    out = []
    for indent, lang, body in _FENCE.findall(text):
        if lang not in _SHELL:
            continue
        lines = [line[len(indent):] if line.startswith(indent) else line for line in body.splitlines()]
        joined = re.sub(r"\s*\\\n\s*", " ", "\n".join(lines))
        out += [c.strip() for c in joined.splitlines() if c.strip() and not c.strip().startswith("#")]
    return out


def _words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def _operators(command: str) -> list[str]:
    """Unquoted shell operators (redirections, pipes, separators) in ``command``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    return [t for t in lexer if t and set(t) <= set("();<>|&")]


def _tagllm_argv(words: list[str]):
    """The argument list after ``tagllm_core`` (``python -m``, ``torchrun -m``) or ``tagllm``; None otherwise."""
    while words and _ENV.match(words[0]):
        words = words[1:]
    if not words:
        return None
    if Path(words[0]).name == "tagllm":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "tagllm_core":
            return words[i + 2:]
    return None


def _make_targets() -> set:
    text = (REPO / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


COMMANDS = [(doc.name, c) for doc in DOCS for c in shell_commands(doc.read_text())]


def test_the_readme_has_commands_to_check():
    readme = [c for doc, c in COMMANDS if doc == "README.md"]
    assert any(_tagllm_argv(_words(c)) for c in readme)
    assert any(_words(c)[:1] == ["make"] for c in readme)


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_command_parses_in_bash_without_redirections(doc, command):
    res = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    # `--input smiles=<SMILES>` unquoted is bash reading a file named "SMILES" (and writing another)
    assert _operators(command) == [], f"unquoted shell operators {_operators(command)} in: {command}"


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_command_is_accepted_as_written(doc, command):
    words = _words(command)
    argv = _tagllm_argv(words)
    if argv is not None:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"the CLI refuses {argv} (exit {err.code})")
        if args.command == "train-function-tag":
            for spec in args.input:
                parse_input_spec(spec)
        for word in argv:
            if word.startswith(_REPO_FILES):
                assert (REPO / word).exists(), f"{word} does not exist"
        columns = dict(c.split("=", 1) for c in getattr(args, "column", None) or [])
        if columns and str(getattr(args, "input", "")).startswith(_REPO_FILES):
            header = set(pd.read_csv(REPO / args.input, nrows=0).columns)
            assert set(columns.values()) <= header, f"{args.input} lacks {set(columns.values()) - header}"
    start = next((i for i, w in enumerate(words) if not _ENV.match(w)), len(words))
    if words[start:start + 1] == ["make"]:
        targets = [w for w in words[start + 1:] if not _ENV.match(w) and not w.startswith("-")]
        assert targets, command
        missing = set(targets) - _make_targets()
        assert not missing, f"no Makefile target {missing}"


def test_the_checks_catch_an_unquoted_domain_tag_and_an_unknown_option():
    assert _operators("python -m tagllm_core train-function-tag --input smiles=<SMILES> --label y")
    assert not _operators("python -m tagllm_core train-function-tag --input 'smiles=<SMILES>' --label y")
    argv = _tagllm_argv(_words("python -m tagllm_core predict --tag X --no-such-option"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "run" in _make_targets() and "test" in _make_targets()
    assert shell_commands("```bash\na \\\n  b  # c\n# d\n```\n") == ["a b  # c"]
