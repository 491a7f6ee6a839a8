"""Browser end-to-end test: the real app, the real bundled backbone, headless Chromium.

``streamlit run app.py`` is started on a free local port (its own process
group, its own ``TAGLLM_HOME``, the bundled SmolLM2 backbone from the usual
cache), and Playwright drives Debian's ``/usr/bin/chromium`` through it:

* **Predict**: choose a function tag, paste aspirin and a bad SMILES, press
  Predict; the results table has a number for the good row and an error for
  the bad one; the detail view shows the 2D depiction, and the 3D viewer
  (py3Dmol in an iframe, 3Dmol.js inlined so it works offline) draws a canvas.
* **Train**: "Train new function tag" on the bundled ``molecules_logp.csv``
  (1 epoch, 30 rows), Start; the job goes queued -> running -> "Step n of N"
  and its progress bar moves; if it finishes within a few minutes, the
  finished view is checked too.
* **Predict as a background job** (issue 10): upload a CSV above the job
  threshold (a few invalid SMILES among valid ones); it starts as a job with
  progress in the jobs panel, which is found again after visiting the Tag
  library; once finished its table is downloaded (one row per input, in input
  order, errors naming the invalid rows, finite predictions elsewhere), and
  again after the app is restarted on the same ``TAGLLM_HOME``.

Screenshots of every step go to ``test-artifacts/e2e/`` (with the server log).
Nothing asserts on timings: the waits are generous because CI machines are
small (2 cores) and may be busy.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from _e2e_util import REPO, StreamlitServer, ensure_function_tag_in_subprocess

CHROMIUM = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "e2e"

APP_READY_S = 240        # first page: the server loads the backbone (cold cache: dequantising, ~45 s+)
PREDICT_S = 180          # two rows on the real backbone
PROGRESS_MOVES_S = 300   # job start -> first optimiser step (model load in the job process included)
FINISH_S = 360           # job start -> finished (optional: only checked if it gets there)
PREDICT_JOB_S = 3600     # predict job start -> finished: 2,000 MOSES molecules on the real backbone (its own
#                          process loads the backbone first); ~1 row/s on two cores shared with a build

# The Predict page runs more than TAGLLM_PREDICT_JOB_ROWS rows as a background job (500 by default; set here
# to the same value so that the test does not depend on the default). The file has the 2,000 rows that
# issue 10 asks for; the other tests predict two rows, far below the threshold.
PREDICT_JOB_ROWS = 500
JOB_FILE_ROWS = 2000

AWAIT_DEFAULT_MS = 60_000
GOOD_SMILES = "CC(=O)Oc1ccccc1C(=O)O"  # aspirin
BAD_SMILES = "not_a_smiles"
NEW_TAG = "E2ELogP"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (/usr/bin/chromium or `chromium` on "
                                                "PATH); `make browser-deps` installs it. Browser e2e test skipped."),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def artifacts() -> Path:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, artifacts):
    """The app on the bundled default backbone, with a function tag to predict with."""
    home = tmp_path_factory.mktemp("e2e-tagllm-home")
    env = dict(os.environ)
    env.pop("TAGLLM_BACKBONE", None)  # the real bundled default; TAGLLM_CACHE stays as the user set it
    env.update(TAGLLM_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               TAGLLM_PREDICT_JOB_ROWS=str(PREDICT_JOB_ROWS))
    tag_name = ensure_function_tag_in_subprocess(env)
    server = StreamlitServer(env, artifacts / "streamlit.log")
    try:
        server.start()
        server.wait_healthy(timeout=180)
        yield server, tag_name
    finally:
        server.stop()  # the server's process group, then every job it launched (their own groups)
        for log in sorted((home / "job_logs").glob("*.log")):  # JobStore keeps logs beside its database
            shutil.copy(log, artifacts / f"job-{log.name}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, app_server, artifacts, request):
    """A fresh tab (a fresh Streamlit session); a screenshot is saved if the test fails."""
    # wide enough that the results grid draws every lead column through "error" (it draws only what fits)
    context = browser.new_context(viewport={"width": 2200, "height": 1800})
    pg = context.new_page()
    pg.set_default_timeout(AWAIT_DEFAULT_MS)
    failures_before = request.session.testsfailed
    yield pg
    if request.session.testsfailed > failures_before:  # this test's call phase failed
        _quiet(lambda: pg.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png")))
    context.close()


# --------------------------------------------------------------------------- helpers


def _quiet(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - best effort (diagnostics, tolerant polling)
        return None


def settle(page, ms: int = 600) -> None:
    """Let Streamlit finish a rerun (the "Running…" status widget goes away), then a short pause."""
    _quiet(lambda: page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=30_000))
    page.wait_for_timeout(ms)


def shot(page, name: str, target=None) -> Path:
    """Screenshot of the viewport, with ``target`` scrolled into view first."""
    settle(page)
    if target is not None:
        _quiet(lambda: target.scroll_into_view_if_needed(timeout=10_000))
        page.wait_for_timeout(300)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def open_app(page, server) -> None:
    page.goto(server.url + "/", timeout=APP_READY_S * 1000)
    # The first session waits for the backbone (a spinner), then the Predict page renders.
    page.get_by_role("heading", name="Predict", exact=True).wait_for(timeout=APP_READY_S * 1000)
    page.get_by_text("SmolLM2-135M-Instruct").first.wait_for(timeout=APP_READY_S * 1000)  # the sidebar
    settle(page)


def choose_option(page, combobox, option_pattern: re.Pattern) -> None:
    if option_pattern.search(combobox.input_value() or ""):
        return
    combobox.click()
    page.get_by_role("option", name=option_pattern).first.click()
    settle(page)


def grid_rows(dataframe) -> tuple[list[str], list[list[str]]]:
    """Headers and cell texts of an ``st.dataframe`` (from the grid's accessible table inside its canvas)."""
    headers = dataframe.locator("table[role=grid] thead th").all_text_contents()
    rows = [r.locator("td").all_text_contents() for r in dataframe.locator("table[role=grid] tbody tr").all()]
    return headers, rows


def metric_value(page, label: str) -> str:
    metric = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=label)).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


# --------------------------------------------------------------------------- Predict


def test_predict_in_the_browser(page, app_server):
    server, tag_name = app_server
    open_app(page, server)
    shot(page, "01-app-ready")

    # the function tag
    tag_box = page.get_by_role("combobox", name="Function tag", exact=True)
    choose_option(page, tag_box, re.compile(rf"^<{re.escape(tag_name)}> ·"))
    assert tag_box.input_value().startswith(f"<{tag_name}>")

    # paste one good and one bad SMILES (Ctrl+Enter makes Streamlit take the value)
    box = page.locator('[data-testid="stTextArea"] textarea').first
    box.fill(f"{GOOD_SMILES}\n{BAD_SMILES}")
    box.press("Control+Enter")
    page.get_by_text("2 row(s) ready.").wait_for()
    shot(page, "02-predict-input", box)

    page.get_by_role("button", name="Predict", exact=True).click()
    # the prediction column's header is the tag with its units, e.g. "Solubility (log mol/L)"
    pred_header = re.compile(rf"^{re.escape(tag_name)}( \(.+\))?$")
    results = page.locator('[data-testid="stDataFrame"]').filter(
        has=page.locator("table[role=grid] thead th", has_text=pred_header))
    results.first.wait_for(state="attached", timeout=PREDICT_S * 1000)
    page.get_by_role("heading", name="Row details").wait_for()
    settle(page)

    # the results table: a number for aspirin, an error for the bad row
    headers, rows = grid_rows(results.first)
    # results lead the table (issue 10): the input columns sit to the right, beyond what the grid draws;
    # the rows are identified by their error text and the detail view's caption below
    assert {"row", "status", "error"} <= set(headers), headers
    col = {h: i for i, h in enumerate(headers)}
    col["prediction"] = next(i for i, h in enumerate(headers) if pred_header.match(h))
    assert len(rows) == 2, rows
    good, bad = rows
    predicted = float(good[col["prediction"]])
    assert math.isfinite(predicted), good
    assert good[col["error"]] == "" and "ok" in good[col["status"]], good
    assert bad[col["prediction"]] == "" and "error" in bad[col["status"]], bad
    assert "invalid SMILES" in bad[col["error"]] and BAD_SMILES in bad[col["error"]], bad
    assert metric_value(page, "Rows") == "2"
    assert metric_value(page, "Predicted") == "1"
    assert metric_value(page, "Errors") == "1"
    summary = page.locator('[data-testid="stAlert"]', has_text="1 row(s) could not be predicted")
    assert summary.is_visible()
    page.get_by_text("Show the error messages").click()
    listed = page.locator('[data-testid="stExpander"]', has_text="Show the error messages")
    listed.get_by_text(re.compile("invalid SMILES")).wait_for()
    shot(page, "03-predict-results", page.get_by_role("heading", name=re.compile(r"^Results")))

    # the detail view of row 1: the number again, and the 2D depiction
    shown = metric_value(page, "Prediction")
    assert math.isclose(float(shown), predicted, rel_tol=1e-2, abs_tol=1e-2), (shown, predicted)
    picture = page.locator('[data-testid="stImage"] img').first
    picture.wait_for(state="visible")
    assert (picture.get_attribute("src") or "").startswith("data:image/svg+xml"), "the depiction is not an SVG"
    assert picture.evaluate("img => img.complete && img.naturalWidth > 0"), "the 2D depiction did not render"
    assert page.locator('[data-testid="stImage"]', has_text=GOOD_SMILES).count() >= 1  # its caption
    shot(page, "04-detail-2d", picture)

    # the 3D viewer: a toggle that embeds py3Dmol in an iframe
    page.get_by_text("Show interactive 3D conformer").click()
    viewer = page.locator('[data-testid="stMain"] iframe').first
    viewer.wait_for(state="visible", timeout=120_000)
    frame = viewer.content_frame
    frame.locator("canvas").first.wait_for(state="attached", timeout=60_000)
    inner = viewer.element_handle().content_frame()
    assert inner.evaluate("() => typeof window.$3Dmol") == "object", "3Dmol.js was not loaded in the viewer"
    assert "failed to load" not in (inner.evaluate("() => document.body.innerText") or "")
    page.wait_for_timeout(1500)  # let WebGL draw before the picture
    shot(page, "05-detail-3d", viewer)

    # the bad row's detail shows its error instead of a picture
    row_box = page.get_by_label("Row (1 – 2)", exact=True)
    row_box.fill("2")
    row_box.press("Enter")
    page.locator('[data-testid="stAlert"]', has_text=f"invalid SMILES '{BAD_SMILES}'").first.wait_for()
    settle(page)
    assert page.locator('[data-testid="stImage"]').count() == 0
    shot(page, "06-detail-bad-row", page.get_by_role("heading", name="Row details"))


# --------------------------------------------------------------------------- Train


def _job_snapshot(page, heading) -> dict:
    """What the jobs panel shows now (tolerant: the fragment re-renders every 2 s)."""
    texts = heading.all_inner_texts()
    bars = page.locator('[data-testid="stProgress"]')
    values = [_quiet(lambda b=b: b.get_by_role("progressbar").first.get_attribute("aria-valuenow", timeout=1000))
              for b in bars.all()]
    labels = bars.all_inner_texts()
    head = texts[0] if texts else ""
    state = next((s for s in ("queued", "running", "finished", "failed", "cancelled") if head.endswith(s)), None)
    value = next((float(v) for v in values if v not in (None, "")), None)
    return {"t": time.monotonic(), "state": state, "value": value, "label": labels[0] if labels else ""}


def test_train_new_function_tag_in_the_browser(page, app_server):
    server, _ = app_server
    open_app(page, server)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Train").click()
    page.get_by_role("heading", name="Train", exact=True).wait_for()
    settle(page)

    form = page.get_by_role("tabpanel", name="Train new function tag")
    form.get_by_text("Bundled example", exact=True).click()
    example = form.get_by_role("combobox", name="Example file", exact=True)
    example.wait_for()
    choose_option(page, example, re.compile(r"^molecules_logp\.csv$"))
    form.get_by_text("molecules_logp.csv: 63 rows").wait_for()
    settle(page)

    name = form.get_by_role("textbox", name="Tag name", exact=True)
    name.fill(NEW_TAG)
    name.press("Enter")
    form.get_by_text("Task: logp. Input: ").first.wait_for()
    form.get_by_text(f". Output: <{NEW_TAG}>").first.wait_for()
    epochs = form.get_by_label("Epochs", exact=True)
    epochs.fill("1")
    epochs.press("Enter")
    settle(page)
    form.get_by_text("Advanced settings").click()
    max_rows = form.get_by_label("Use at most this many rows (0 = all)", exact=True)
    max_rows.fill("30")
    max_rows.press("Enter")
    form.get_by_text(re.compile(r"^30 rows, about \d+ for training")).wait_for()
    settle(page)
    assert epochs.input_value() == "1" and max_rows.input_value() == "30"
    start = form.get_by_role("button", name="Start training")
    assert start.is_enabled(), form.locator('[data-testid="stAlert"]').all_inner_texts()
    shot(page, "07-train-form", start)

    start.click()
    page.locator('[data-testid="stAlert"]', has_text=f"training <{NEW_TAG}> in the background").wait_for()
    heading = page.get_by_role("heading", name=re.compile(rf"Job #\d+: <{NEW_TAG}>"))
    heading.first.wait_for()
    t_start = time.monotonic()
    shot(page, "08-job-started", heading.first)

    # Follow the jobs panel: queued / starting at 0 % -> "Step n of N" with a growing bar -> finished.
    seen = [_job_snapshot(page, heading)]
    progress_shot = False
    while time.monotonic() - t_start < FINISH_S:
        snap = _job_snapshot(page, heading)
        seen.append(snap)
        assert snap["state"] not in ("failed", "cancelled"), (
            f"the training job {snap['state']}:\n"
            + "\n".join(page.locator('[data-testid="stAlert"]').all_inner_texts()))
        if snap["value"] and snap["value"] > 0 and not progress_shot:
            shot(page, "09-job-progress", heading.first)
            progress_shot = True
        if snap["state"] == "finished":
            break
        if not progress_shot and time.monotonic() - t_start > PROGRESS_MOVES_S:
            break
        page.wait_for_timeout(1500)

    trail = [(round(s["t"] - t_start), s["state"], s["value"], s["label"]) for s in seen]
    states = [s["state"] for s in seen if s["state"]]
    values = [s["value"] for s in seen if s["value"] is not None]
    assert states and states[0] in ("queued", "running"), trail
    moved = (values and max(values) > values[0]) or (states[-1] == "finished" and states[0] != "finished")
    assert moved, f"the job's progress did not move in {PROGRESS_MOVES_S} s: {trail}"
    assert any(re.match(r"Step \d+ of \d+", s["label"] or "") for s in seen) or states[-1] == "finished", trail

    if states[-1] == "finished":
        done = page.locator('[data-testid="stAlert"]', has_text=f"<{NEW_TAG}> is trained and saved")
        done.wait_for()
        use = page.get_by_role("button", name=f"Predict with <{NEW_TAG}>")
        use.wait_for()
        shot(page, "10-job-finished", use)
    else:
        print(f"(the job had not finished after {FINISH_S} s; progress movement was checked: {trail[-1]})")
        shot(page, "10-job-still-running", heading.first)


# --------------------------------------------------------------------------- Predict as a background job


JOB_BAD_ROWS = {7: "not_a_smiles", 1003: "C1CC(", 1998: "Xq9"}  # 1-based input row -> an unparsable SMILES


def _job_input_csv(path: Path) -> list[tuple[str, str]]:
    """A JOB_FILE_ROWS-row CSV (id, smiles): reference-set molecules with JOB_BAD_ROWS in their places."""
    reference = (REPO / "tagllm_core" / "data" / "reference" / "moses_reference.smi").read_text().split()
    good = iter(reference[1:])  # the first line is the header
    rows = [(f"m{i:04d}", JOB_BAD_ROWS.get(i) or next(good)) for i in range(1, JOB_FILE_ROWS + 1)]
    path.write_text("id,smiles\n" + "".join(f"{i},{s}\n" for i, s in rows))
    return rows


def _predict_job_heading(page):
    return page.get_by_role("heading", name=re.compile(r"Job #\d+: <.+> \(prediction\)"))


def _download_job_table(page, job_id: str, to: Path) -> bytes:
    button = page.get_by_role("button", name=f"Download job #{job_id}'s predictions (CSV)")
    button.wait_for()
    with page.expect_download(timeout=120_000) as download:
        button.click()
    download.value.save_as(str(to))
    return to.read_bytes()


def _check_job_table(path: Path, expected: list[tuple[str, str]]) -> None:
    """One row per input, in input order; an error naming each invalid SMILES; a finite number elsewhere."""
    import pandas as pd

    table = pd.read_csv(path, keep_default_na=False, dtype=str)
    assert len(table) == len(expected), (len(table), list(table.columns))
    assert {"id", "smiles", "row", "prediction", "error"} <= set(table.columns), list(table.columns)
    assert table["id"].tolist() == [i for i, _ in expected]
    assert table["smiles"].tolist() == [s for _, s in expected]
    assert table["row"].astype(int).tolist() == list(range(1, len(expected) + 1))
    for n, rec in enumerate(table.to_dict("records"), start=1):
        if n in JOB_BAD_ROWS:
            assert "invalid SMILES" in rec["error"] and JOB_BAD_ROWS[n] in rec["error"], rec
            assert rec["prediction"] == "", rec
        else:
            assert rec["error"] == "", rec
            assert math.isfinite(float(rec["prediction"])), rec


def test_predict_large_upload_runs_as_a_background_job(page, app_server, tmp_path):
    server, tag_name = app_server
    expected = _job_input_csv(tmp_path / "predict_job_input.csv")
    shutil.copy(tmp_path / "predict_job_input.csv", ARTIFACTS / "predict_job_input.csv")
    open_app(page, server)
    tag_box = page.get_by_role("combobox", name="Function tag", exact=True)
    choose_option(page, tag_box, re.compile(rf"^<{re.escape(tag_name)}> ·"))

    # upload the file: more rows than the job threshold
    page.get_by_text("Upload a CSV", exact=True).click()
    settle(page)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
        str(tmp_path / "predict_job_input.csv"))
    page.get_by_text(re.compile(rf"predict_job_input\.csv: {JOB_FILE_ROWS:,} rows; columns id, smiles")).wait_for()
    settle(page)
    column = page.get_by_role("combobox", name=re.compile(r"^Column for 'smiles'"))
    choose_option(page, column, re.compile(r"^smiles$"))
    assert column.input_value() == "smiles"
    shot(page, "11-predict-job-upload", column)

    page.get_by_role("button", name="Predict", exact=True).click()
    started = page.locator('[data-testid="stAlert"]',
                           has_text=re.compile(rf"{JOB_FILE_ROWS:,} rows run as background job #\d+"))
    started.wait_for()
    job_id = re.search(r"background job #(\d+)", started.inner_text()).group(1)
    page.get_by_role("heading", name="Background predictions").wait_for()
    heading = _predict_job_heading(page)
    heading.first.wait_for()
    # the job's bar is drawn just after its heading (or not at all, once the job is done)
    bar = page.locator('[data-testid="stProgress"]')
    bar.or_(heading.filter(has_text=re.compile(r"finished$"))).first.wait_for()
    first = _job_snapshot(page, heading)
    assert f"Job #{job_id}:" in heading.first.inner_text()
    # progress shown: a bar with queued / starting / "Row n of N" (or, on a fast machine, already done)
    assert first["state"] == "finished" or (first["state"] in ("queued", "running") and first["label"]), first
    shot(page, "12-predict-job-started", heading.first)

    # leave the page and come back: the job is found again in the panel (it runs in its own process)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Tag library").click()
    page.get_by_role("heading", name="Tag library", exact=True).wait_for()
    settle(page)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Predict").click()
    page.get_by_role("heading", name="Background predictions").wait_for()
    heading = _predict_job_heading(page)
    heading.first.wait_for()
    assert f"Job #{job_id}:" in heading.first.inner_text()

    # follow it to the end
    t_start, seen = time.monotonic(), [first]
    while time.monotonic() - t_start < PREDICT_JOB_S:
        snap = _job_snapshot(page, heading)
        seen.append(snap)
        assert snap["state"] not in ("failed", "cancelled"), (
            f"the predict job {snap['state']}:\n"
            + "\n".join(page.locator('[data-testid="stAlert"]').all_inner_texts()))
        if snap["state"] == "finished":
            break
        page.wait_for_timeout(1500)
    trail = [(round(s["t"] - t_start), s["state"], s["value"], s["label"]) for s in seen]
    trail = [t for n, t in enumerate(trail) if n == 0 or t[1:] != trail[n - 1][1:]]  # each change once
    print(f"predict job trail: {trail}")
    assert seen[-1]["state"] == "finished", f"the predict job did not finish in {PREDICT_JOB_S} s: {trail}"
    rows_done = [s["label"] for s in seen if re.match(r"Row [1-9][\d,]* of ", s["label"] or "")]
    assert all(" left" in label for label in rows_done), rows_done  # the ETA, once rows are done
    errors = len(JOB_BAD_ROWS)
    page.locator('[data-testid="stAlert"]', has_text=(
        f"Predicted {JOB_FILE_ROWS:,} rows with <{tag_name}>: {JOB_FILE_ROWS - errors:,} predicted, "
        f"{errors} with errors"
    )).wait_for()
    settle(page)
    shot(page, "13-predict-job-finished", heading.first)

    table = _download_job_table(page, job_id, ARTIFACTS / "predict_job_output.csv")
    _check_job_table(ARTIFACTS / "predict_job_output.csv", expected)

    # a new server process on the same TAGLLM_HOME still lists the job and serves the same table
    server.restart(timeout=180)
    open_app(page, server)
    page.get_by_role("heading", name="Background predictions").wait_for()
    heading = _predict_job_heading(page)
    heading.first.wait_for()
    assert f"Job #{job_id}:" in heading.first.inner_text() and heading.first.inner_text().endswith("finished")
    shot(page, "14-predict-job-after-restart", heading.first)
    again = _download_job_table(page, job_id, ARTIFACTS / "predict_job_output_after_restart.csv")
    assert again == table
