"""Offline by default, online when asked: the README's hub-id promise and what app.py / the Makefile do.

The app and ``make run`` default to ``HF_HUB_OFFLINE=1`` (the bundled backbone
needs no network), but an explicitly set value is kept, so
``HF_HUB_OFFLINE=0 TAGLLM_BACKBONE=<hub id> make run`` downloads as the
README says; transformers follows the same choice. ``make test`` stays
offline whatever the environment says.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tagllm_core.backbone import load_backbone
from tagllm_core.exceptions import BackboneError

REPO = Path(__file__).resolve().parent.parent
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _app_environment(monkeypatch, **env) -> dict:
    """Run app.py's statements before ``import streamlit`` (its environment set-up) under ``env``."""
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    tree = ast.parse((REPO / "app.py").read_text())
    prologue = []
    for node in tree.body:
        if isinstance(node, ast.Import) and any(a.name == "streamlit" for a in node.names):
            break
        prologue.append(node)
    exec(compile(ast.Module(body=prologue, type_ignores=[]), "app.py", "exec"), {})
    return {var: os.environ.get(var) for var in OFFLINE_VARS}


def test_app_is_offline_by_default(monkeypatch):
    assert _app_environment(monkeypatch) == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_app_keeps_an_explicit_online_setting_and_transformers_follows_it(monkeypatch):
    assert _app_environment(monkeypatch, HF_HUB_OFFLINE="0") == {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    env = _app_environment(monkeypatch, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="1")
    assert env == {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"}  # both set by the user: both kept


def _make_dry_run(target: str, *args: str, **env) -> str:
    child = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    child.update(env)
    res = subprocess.run(["make", "-n", "-C", str(REPO), target, *args], capture_output=True, text=True, env=child,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _offline_setting(recipe: str, program: str) -> str:
    line = next(ln for ln in recipe.splitlines() if program in ln)
    return re.search(r"HF_HUB_OFFLINE=(\S*)", line).group(1)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_is_offline_unless_told_otherwise():
    assert _offline_setting(_make_dry_run("run"), "streamlit run") == "1"
    assert _offline_setting(_make_dry_run("run", HF_HUB_OFFLINE="0"), "streamlit run") == "0"
    assert _offline_setting(_make_dry_run("run", "HF_HUB_OFFLINE=0"), "streamlit run") == "0"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_stays_offline_even_when_the_environment_is_online():
    assert _offline_setting(_make_dry_run("test", HF_HUB_OFFLINE="0"), "pytest") == "1"


def test_readme_says_how_to_use_a_hub_id():
    readme = (REPO / "README.md").read_text()
    assert "on a machine with internet" not in readme  # the old promise that make run did not keep
    assert re.search(r"HF_HUB_OFFLINE=0 TAGLLM_BACKBONE=\S+ make run", readme)


def test_offline_hub_id_error_says_how_to_go_online(monkeypatch):
    """conftest makes the tests offline; a hub id that is not in the cache must say what to set."""
    with pytest.raises(BackboneError, match="HF_HUB_OFFLINE=0"):
        load_backbone("tagllm-tests/no-such-model-anywhere", use_cache=False)
