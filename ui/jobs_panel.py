"""The live jobs panel of the Train page, and of the Predict page for its background predictions.

A fragment re-runs every two seconds and only reads SQLite (the job rows and
the chosen job's new events), so it never holds the page up while a job trains in
its own process. When a job ends, the whole page reruns once so that the
sidebar and the tag lists pick up the new tag. A finished predict job offers its
table for download, read once from the job's folder; a running one offers the rows
done so far.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from tagllm_core.exceptions import TagLLMError
from tagllm_core.jobs import Job, JobStore, can_relaunch, cancel, kill, prediction_output, relaunch
from tagllm_core.metrics import PRIMARY_METRIC

from . import charts, state
from .cards import format_number
from .results import format_seconds
from .training import argv_value

STATE_ICON = {"queued": "⏳", "running": "🏃", "finished": "✅", "failed": "❌", "cancelled": "⏹️"}
KIND_TEXT = {"function-tag": "function tag", "domain-tag": "domain tag", "predict": "prediction"}
FORCE_STOP_AFTER_S = 15
GROWING_TABLE_READ_BYTES = 16 << 20  # a running job's table up to this size is read at each change


def _when(ts) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "–"


def _overview(jobs: list[Job]) -> pd.DataFrame:
    return pd.DataFrame([{
        "job": j.id, "tag": f"<{j.name}>", "kind": KIND_TEXT.get(j.kind, j.kind),
        "state": f"{STATE_ICON.get(j.state, '')} {j.state}", "progress": round(100 * j.progress),
        "created": _dt.datetime.fromtimestamp(j.created).strftime("%Y-%m-%d %H:%M"),
        "elapsed": format_seconds(j.elapsed_s) if j.elapsed_s is not None else "–",
    } for j in jobs])


def panel(kinds: Optional[tuple] = None, key: str = "job_select") -> None:
    """The jobs panel (call from a page; it wraps itself in a polling fragment). ``kinds``: only jobs of
    these kinds (default: all); ``key``: the job picker's widget key, one per page's panel."""
    _panel(kinds, key)


@st.fragment(run_every=2)
def _panel(kinds: Optional[tuple], key: str) -> None:
    store = state.job_store()
    jobs = [j for j in store.list(limit=25 if kinds is None else 200) if kinds is None or j.kind in kinds][:25]
    active = {j.id for j in jobs if j.is_active}
    previous = st.session_state.get("_active_jobs")
    st.session_state["_active_jobs"] = active
    if previous is not None and previous - active:
        st.rerun()  # a job ended: refresh the whole page (sidebar counts, tag lists)
    if not jobs:
        st.caption("No training jobs yet. Jobs you start appear here, with live progress; they keep running "
                   "if you close or refresh the tab.")
        return
    st.dataframe(_overview(jobs), hide_index=True, width="stretch",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0,
                                                                           max_value=100, format="%d%%")})
    ids = [j.id for j in jobs]
    if st.session_state.get(key) not in ids:
        st.session_state[key] = ids[0]
    by_id = {j.id: j for j in jobs}
    job_id = st.selectbox("Job", ids, key=key,
                          format_func=lambda i: f"#{i} <{by_id[i].name}> · {by_id[i].state}")
    render_job(store, by_id[job_id])


def render_job(store: JobStore, job: Job) -> None:
    with st.container(border=True):
        st.markdown(f"#### {STATE_ICON.get(job.state, '')} Job #{job.id}: <{job.name}> "
                    f"({KIND_TEXT.get(job.kind, job.kind)}) · {job.state}")
        if job.is_active:
            _active(store, job)
        events = _events(store, job.id)
        _curves(events, job.id)
        if job.kind == "predict":
            _prediction(store, job)
        elif job.state == "finished":
            _finished(job)
        elif job.state == "failed":
            st.error(f"The job failed: {job.error or 'no reason recorded'}. No tag was saved.")
        elif job.state == "cancelled":
            st.info("The job was cancelled; no tag was saved.")
        if can_relaunch(job):
            _relaunch(store, job)
        with st.expander("Log", expanded=job.state == "failed"):
            st.code(job.log_tail(12_000) or "(empty)", language=None)
            st.caption(f"Command: tagllm {shlex.join(job.argv)}")
        if job.is_done and st.button("Remove from the list", key=f"forget-{job.id}"):
            store.delete(job.id)
            st.session_state.get("_job_events", {}).pop(job.id, None)
            st.rerun()


RELAUNCH_HELP = {
    "function-tag": "Starts the job again with the same settings; it resumes from the last epoch it saved.",
    "predict": "Starts the job again with the same settings; it keeps the rows already predicted.",
}


def _relaunch(store: JobStore, job: Job) -> None:
    """A died or cancelled job (e.g. after the app or the machine restarted) started again as it was."""
    help_text = RELAUNCH_HELP.get(job.kind, "Starts the job again with the same settings, from the beginning.")
    if st.button("Relaunch", key=f"relaunch-{job.id}", help=help_text):
        try:
            relaunch(store, job.id)
        except TagLLMError as err:
            st.error(str(err))
            return
        st.session_state.get("_job_events", {}).pop(job.id, None)  # its old progress was cleared
        st.rerun()


def _events(store: JobStore, job_id: int) -> list[dict]:
    """The job's progress events. The fragment polls every 2 s, so each poll reads only the events newer
    than those this session already holds (event ids only grow; a long job has thousands)."""
    held = st.session_state.setdefault("_job_events", {})
    events = held.get(job_id, [])
    new = store.history(job_id, after_event=events[-1]["id"] if events else 0)
    if new:
        events = held[job_id] = events + new
    return events


def _active(store: JobStore, job: Job) -> None:
    if job.state == "queued":
        ahead = store.queue_position(job.id)
        st.progress(0.0, text="Queued: waiting for a free slot" + (f" ({ahead} job(s) ahead)" if ahead else "…"))
    elif job.total_steps <= 0:
        st.progress(0.0, text=f"Starting: loading the model and preparing the data… "
                              f"({format_seconds(job.elapsed_s)} so far)")
    else:
        text = f"{'Row' if job.kind == 'predict' else 'Step'} {job.step:,} of {job.total_steps:,}"
        if job.loss is not None:
            text += f" · loss {format_number(job.loss, 4)}"
        if job.eta_s is not None:
            text += f" · about {format_seconds(job.eta_s)} left"
        st.progress(job.progress, text=text)
    left, right = st.columns([1, 3])
    if job.cancel_requested:
        waited = time.time() - (job.cancel_requested_at or time.time())
        right.caption("Cancelling: the job stops at its next step.")
        if waited > FORCE_STOP_AFTER_S and left.button("Force stop", key=f"kill-{job.id}"):
            kill(store, job.id)
            st.rerun()
    elif left.button("Cancel", key=f"cancel-{job.id}", type="secondary"):
        cancel(store, job.id)
        st.rerun()


def _curves(events: list, job_id: int) -> None:
    loss = charts.loss_figure(events)
    keys = charts.metric_keys(events)
    key = charts.primary_metric(keys)
    metric = charts.metric_figure(events, key) if key else None
    if loss is None and metric is None:
        return
    left, right = st.columns(2)
    if loss is not None:
        left.plotly_chart(loss, width="stretch", key=f"loss-{job_id}")
    if metric is not None:
        right.plotly_chart(metric, width="stretch", key=f"metric-{job_id}")


def _finished(job: Job) -> None:
    res = job.result or {}
    for warning in res.get("warnings") or []:  # e.g. a scaffold split that fell back to random
        st.warning(warning)
    if job.kind == "domain-tag" or "perplexity" in res:
        ppl = res.get("perplexity") or {}
        st.success(f"<{res.get('tag', job.name)}> is trained and saved in your library. Choose it as the domain "
                   f"tag of an input when you train a function tag, or swap it in on the Predict page.")
        if ppl:
            st.plotly_chart(charts.perplexity_figure(ppl), width="stretch", key=f"ppl-{job.id}")
        if res.get("sequences_dropped"):
            st.caption(f"{res['sequences_dropped']} sequence(s) of the corpus were unusable and skipped.")
        return
    metrics = res.get("metrics") or {}
    st.success(f"<{res.get('tag', job.name)}> is trained and saved in your library.")
    shown = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))][:6]
    if shown:
        cols = st.columns(len(shown))
        for col, (k, v) in zip(cols, shown):
            col.metric(k.replace("_", " "), format_number(v), help="on the validation rows")
    task = "classification" if argv_value(job.argv, "--task") == "classification" else "regression"
    held_out = res.get("held_out") or {}
    main = PRIMARY_METRIC[task][0]
    if isinstance(held_out.get(main), (int, float)):
        st.caption(f"{main.upper()} on the held-out half of the validation rows ({held_out.get('n', '?')} rows "
                   f"that chose neither the read-out layer nor the epoch): {format_number(held_out[main])}. "
                   f"Expect about this on new data like the validation set.")
    interval = res.get("interval") or {}
    if interval.get("halfwidth"):
        st.caption(f"{interval.get('level', 0.9):.0%} prediction interval: ± "
                   f"{format_number(float(interval['halfwidth'][0]))}")
    parity = res.get("parity") or {}
    if parity.get("true"):
        st.plotly_chart(charts.parity_figure(parity["true"], parity["pred"], task), width="stretch",
                        key=f"parity-{job.id}")
    if res.get("rows_dropped"):
        with st.expander(f"{res['rows_dropped']} training row(s) were unusable and skipped"):
            for row in res.get("dropped_examples") or []:
                st.markdown(f"- {row}")
    if st.button(f"Predict with <{res.get('tag', job.name)}>", key=f"use-{job.id}", type="primary"):
        st.session_state["predict_tag_request"] = res.get("tag", job.name)
        st.switch_page("pages/predict.py")
    st.page_link("pages/predict.py", label="Open the Predict page", icon="🔮")


@st.cache_resource(max_entries=4, show_spinner=False)
def _table_bytes(path: str, mtime_ns: int, size: int) -> bytes:
    """A predict job's table, read once per version of the file; cache_resource hands back the same
    bytes object instead of a copy, which matters for tables of a million rows polled every 2 s."""
    return Path(path).read_bytes()


def _prediction(store: JobStore, job: Job) -> None:
    """A predict job's outcome and its table: all of it once finished, the rows done so far otherwise."""
    path = prediction_output(store, job.id)
    res = job.result or {}
    if job.state == "finished":
        rows = res.get("skipped", 0) + res.get("rows", 0)
        st.success(f"Predicted {rows:,} rows with <{job.name}>: {rows - res.get('errors', 0):,} predicted, "
                   f"{res.get('errors', 0):,} with errors (the error column says why).")
    elif job.state == "failed":
        st.error(f"The job failed: {job.error or 'no reason recorded'}.")
    elif job.state == "cancelled":
        st.info("The job was cancelled.")
    if not path.is_file() or path.stat().st_size == 0:
        return
    done = "" if job.state == "finished" else " so far"
    # The table is served as fixed bytes: their file id is a hash of the content, so it stays the same
    # on every 2 s poll while the file does not change (and a replaced id stays served for one more
    # poll). A callable gets a new id on each poll and the old one is revoked at once, so a click that
    # landed during a poll downloaded nothing (seen in CI). Only a big table that is still growing is
    # read when the button is pressed, rather than at every poll.
    stat = path.stat()
    if job.state == "finished" or stat.st_size <= GROWING_TABLE_READ_BYTES:
        data = _table_bytes(str(path), stat.st_mtime_ns, stat.st_size)
    else:
        data = lambda: path.read_bytes()  # noqa: E731
    st.download_button(f"⬇️ Download job #{job.id}'s predictions{done} (CSV)", data,
                       file_name=f"{job.name.replace(' + ', '_')}_predictions.csv", mime="text/csv",
                       key=f"predict-job-{job.id}", on_click="ignore")
    if job.state == "finished":
        st.dataframe(pd.read_csv(path, nrows=20, keep_default_na=False), hide_index=True, width="stretch")
        st.caption("The first 20 rows; the download holds every row.")
