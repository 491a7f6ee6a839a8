"""The structure editor (``ui.editor``): the installed component works offline, drawings become rows,
and the Predict page offers a Draw mode wired to them.

AppTest cannot render a custom component (it runs the script, not the browser), so the page tests
replace ``editor.draw`` with what the editor would have returned after Apply.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.parse

import pytest

from tagllm_core.exceptions import InputError
from ui import editor

from _e2e_util import REPO, free_port
from test_app import new_app, texts, tiny_app, tiny_backbone_dir  # noqa: F401 (fixtures, by name)

SMILES_ONLY = [("smiles", "smiles")]
PROTEIN_AND_SMILES = [("protein", "protein"), ("smiles", "smiles")]


# --------------------------------------------------------------------------- the component


def test_installed_editor_ships_its_frontend_and_loads_nothing_remote():
    pytest.importorskip("streamlit_ketcher", reason="the optional editor package is not installed")
    folder = editor.frontend_dir()
    index = folder / "index.html"
    assert index.is_file()
    html = index.read_text(encoding="utf-8")
    assert editor.remote_assets(html) == []
    local = re.findall(r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html)
    scripts = [path for path in local if path.endswith(".js")]
    assert scripts, "index.html loads no script"
    for path in local:
        assert (folder / path).is_file(), f"{path} is referenced by index.html but not in the package"


def test_remote_assets_finds_cdn_scripts_and_stylesheets():
    html = ('<script src="./static/js/main.js"></script>'
            '<script defer src="https://unpkg.com/jsme-editor/jsme.nocache.js"></script>'
            "<link rel=stylesheet href=//cdn.example.org/x.css>"
            '<link href="static/css/main.css" rel="stylesheet">')
    assert editor.remote_assets(html) == ["https://unpkg.com/jsme-editor/jsme.nocache.js", "//cdn.example.org/x.css"]


def test_draw_mode_only_for_molecule_slots_with_the_editor_installed():
    assert editor.input_modes(SMILES_ONLY, True) == ["Paste", "Upload a CSV", editor.DRAW]
    assert editor.input_modes(PROTEIN_AND_SMILES, True)[-1] == editor.DRAW
    assert editor.DRAW not in editor.input_modes(SMILES_ONLY, False)
    assert editor.DRAW not in editor.input_modes([("sequence", "protein")], True)


# --------------------------------------------------------------------------- drawings into rows


@pytest.mark.parametrize("value,smiles", [(None, ""), ("", ""), ("  \n", ""), (" CCO\n", "CCO"),
                                          ("C[C@H](N)O |&1:1|", "C[C@H](N)O")])
def test_editor_output_to_smiles(value, smiles):
    assert editor.smiles_from_editor(value) == smiles


def test_a_drawing_becomes_one_row():
    assert editor.rows_from_drawing(SMILES_ONLY, {"smiles": "OCC"}, {}) == [{"smiles": "OCC"}]


def test_one_drawing_pairs_with_every_pasted_protein():
    rows = editor.rows_from_drawing(PROTEIN_AND_SMILES, {"smiles": "CCO"}, {"protein": "MKTAYIAK\nMGSSHHHH"})
    assert rows == [{"protein": "MKTAYIAK", "smiles": "CCO"}, {"protein": "MGSSHHHH", "smiles": "CCO"}]


def test_an_empty_canvas_asks_for_a_drawing():
    with pytest.raises(InputError, match=r"'smiles': Nothing drawn yet: draw a molecule .* press Apply"):
        editor.rows_from_drawing(SMILES_ONLY, {"smiles": ""}, {})


@pytest.mark.parametrize("drawn,reason", [("C1CC", "could not parse"),
                                          ("CC(C)(C)(C)(C)C", "valence")])
def test_an_invalid_drawing_says_what_is_wrong(drawn, reason):
    with pytest.raises(InputError) as err:
        editor.rows_from_drawing(SMILES_ONLY, {"smiles": drawn}, {})
    message = str(err.value)
    assert message.startswith("'smiles': The drawing is not a valid molecule")
    assert reason in message.lower() and "press Apply again" in message


# --------------------------------------------------------------------------- the Predict page


def _draw_mode(monkeypatch, drawn: str):
    monkeypatch.setattr(editor, "component", lambda: (lambda *a, **k: drawn))
    at = new_app("pages/predict.py")
    assert editor.DRAW in at.radio(key="predict_mode").options
    at.radio(key="predict_mode").set_value(editor.DRAW).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _predicted(at) -> bool:
    return "prediction" in at.session_state and at.session_state["prediction"] is not None


@pytest.mark.usefixtures("tiny_app")
def test_predict_page_draws_and_predicts_a_molecule(monkeypatch):
    at = _draw_mode(monkeypatch, "OCC")
    assert "Drawn: `OCC`; 1 row(s) ready." in texts(at.caption)
    at.button(key="predict_button").click().run()
    assert not at.exception
    frame = at.session_state["prediction"].frame
    assert len(frame) == 1 and frame.loc[0, "error"] == "" and isinstance(frame.loc[0, "prediction"], float)


@pytest.mark.usefixtures("tiny_app")
def test_predict_page_empty_canvas_is_a_hint_then_the_reason_on_predict(monkeypatch):
    at = _draw_mode(monkeypatch, "")
    assert "Nothing drawn yet" in texts(at.caption) and not at.error
    at.button(key="predict_button").click().run()
    assert "Nothing drawn yet" in texts(at.error)
    assert not _predicted(at)


@pytest.mark.usefixtures("tiny_app")
def test_predict_page_invalid_drawing_is_an_error_and_not_predicted(monkeypatch):
    at = _draw_mode(monkeypatch, "C1CC")
    assert "The drawing is not a valid molecule" in texts(at.error)
    at.button(key="predict_button").click().run()
    assert not _predicted(at)


@pytest.mark.usefixtures("tiny_app")
def test_predict_page_without_the_editor_hides_draw_with_a_note(monkeypatch):
    monkeypatch.setattr(editor, "component", lambda: None)
    at = new_app("pages/predict.py")
    assert editor.DRAW not in at.radio(key="predict_mode").options
    assert editor.PACKAGE in texts(at.caption)


@pytest.mark.usefixtures("tiny_app")
def test_predict_page_renders_the_installed_editor():
    pytest.importorskip("streamlit_ketcher", reason="the optional editor package is not installed")
    at = new_app("pages/predict.py")
    at.radio(key="predict_mode").set_value(editor.DRAW).run()
    assert not at.exception, [e.value for e in at.exception]
    # AppTest shows a custom component as an element of a type it does not know; nothing applied yet
    assert [e.type for e in at.main if type(e).__name__ == "UnknownElement"] == ["component_instance"]
    assert "Nothing drawn yet" in texts(at.caption) and not at.error


# --------------------------------------------------------------------------- in a browser, offline

CHROMIUM = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
EDITOR_APP = """
from ui import editor
import streamlit as st
smiles = editor.draw(key="draw")
st.write(f"RESULT:[{smiles}] problem:{editor.drawing_problem(smiles)}")
"""


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (`make browser-deps`)")
def test_the_editor_draws_in_a_browser_with_every_other_host_blocked(tmp_path):
    """Ketcher loads, a benzene ring drawn and applied comes back as a valid SMILES, and the page
    asked nothing of any host but the app's own (each such request is aborted and recorded)."""
    pytest.importorskip("streamlit_ketcher", reason="the optional editor package is not installed")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    script = tmp_path / "editor_app.py"
    script.write_text(EDITOR_APP)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), TAGLLM_HOME=str(tmp_path / "home"))
    with open(tmp_path / "streamlit.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
                                   "--server.port", str(port), "--server.address", "127.0.0.1",
                                   "--browser.gatherUsageStats", "false"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    elsewhere = []

    def only_this_host(route):
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urllib.parse.urlparse(url).hostname == "127.0.0.1":
            return route.continue_()
        elsewhere.append(url)
        return route.abort()

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.context.route("**/*", only_this_host)
            for _ in range(120):  # the server takes a few seconds to listen
                try:
                    page.goto(f"http://127.0.0.1:{port}/", timeout=10_000)
                    break
                except Exception:  # playwright's connection-refused error
                    page.wait_for_timeout(500)
            page.locator("iframe").first.wait_for(timeout=120_000)
            frame = next(f for f in page.frames if "streamlit_ketcher" in f.url)
            frame.locator("[data-testid=loading-placeholder]").wait_for(state="detached", timeout=120_000)
            frame.locator("[title*=Benzene]").first.click(timeout=30_000)
            box = page.locator("iframe").first.bounding_box()
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # drop it on the canvas
            frame.locator("button:has-text('Apply')").click()
            page.get_by_text("RESULT:[C").wait_for(timeout=60_000)
            result = page.get_by_text("RESULT:[C").inner_text()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    smiles = result.split("[", 1)[1].split("]", 1)[0]
    assert result.endswith("problem:None"), result
    assert editor.rows_from_drawing(SMILES_ONLY, {"smiles": smiles}, {})[0]["smiles"] == smiles
    from rdkit import Chem
    assert Chem.MolToSmiles(Chem.MolFromSmiles(smiles)) == "c1ccccc1"
    assert elsewhere == []
