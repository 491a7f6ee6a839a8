"""The detail view of one input: molecule (2D, 3D, descriptors, alerts) or protein (ProtParam).

Rendered for one chosen row only, and every computation is cached, so a
10,000-row result costs nothing until a row is opened.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st

from tagllm_core import bio, chem
from tagllm_core.domains import clean
from tagllm_core.exceptions import TagLLMError

from . import charts
from .cards import format_number

_DESCRIPTOR_LABELS = {
    "mw": ("Molecular weight", "Da"), "clogp": ("cLogP (Crippen)", ""), "tpsa": ("TPSA", "Å²"),
    "hbd": ("H-bond donors", ""), "hba": ("H-bond acceptors", ""), "rotatable_bonds": ("Rotatable bonds", ""),
    "qed": ("QED", ""), "heavy_atoms": ("Heavy atoms", ""), "formula": ("Formula", ""),
}
_PROTEIN_LABELS = {
    "length": ("Length", "residues"), "molecular_weight": ("Molecular weight", "Da"),
    "isoelectric_point": ("Isoelectric point (pI)", ""), "gravy": ("GRAVY", ""),
    "instability_index": ("Instability index", "(> 40: likely unstable)"), "aromaticity": ("Aromaticity", ""),
    "nonstandard_residues": ("Non-standard residues", ""),
}


@st.cache_data(max_entries=256, show_spinner=False)
def _svg(smiles: str, highlight: tuple = ()) -> str:
    return chem.mol_to_svg(smiles, width=360, height=260, highlight_atoms=list(highlight) or None)


@st.cache_data(max_entries=64, show_spinner="Generating a 3D conformer (ETKDG + MMFF)…")
def _molblock(smiles: str) -> str:
    return chem.conformer_molblock(smiles)


@st.cache_data(max_entries=256, show_spinner=False)
def _molecule_facts(smiles: str):
    d = chem.descriptors(smiles)
    return d, chem.lipinski(d), chem.structural_alerts(smiles)


@st.cache_data(max_entries=256, show_spinner=False)
def _protein_facts(sequence: str):
    return bio.protein_properties(sequence), bio.residue_composition(sequence)


def _table(values: dict, labels: dict) -> pd.DataFrame:
    rows = []
    for key, (label, unit) in labels.items():
        if key not in values:
            continue
        v = values[key]
        text = format_number(v, 2) if isinstance(v, float) else str(v)
        rows.append((label, f"{text} {unit}".strip()))
    return pd.DataFrame(rows, columns=["property", "value"])


def show_3d(smiles: str, key: str) -> None:
    """A toggle that opens an interactive py3Dmol viewer of an ETKDG/MMFF conformer."""
    if not st.toggle("Show interactive 3D conformer", key=key,
                     help="Embeds one ETKDG conformer, optimised with MMFF (takes a second)."):
        return
    try:
        html = chem.view3d_html(_molblock(smiles), width=560, height=400, style="stick")
    except TagLLMError as err:
        st.error(str(err))
        return
    if chem.local_3dmol_js_path() is None:
        st.caption("The 3D viewer loads 3Dmol.js from the internet; without a network connection it stays empty.")
    if hasattr(st, "iframe"):
        st.iframe(html, height=420, alt=f"3D conformer of {smiles}")
    else:  # older Streamlit
        import streamlit.components.v1 as components

        components.html(html, height=420)


def show_molecule(raw: str, key: str) -> None:
    c = clean("smiles", raw)
    if not c.ok:
        st.error(c.error)
        return
    smiles = c.value
    try:
        desc, rule, alerts = _molecule_facts(smiles)
    except TagLLMError as err:
        st.error(str(err))
        return
    left, right = st.columns([1, 1])
    with left:
        highlight = ()
        if alerts and st.checkbox("Highlight alert atoms", key=f"{key}-hl"):
            highlight = tuple(sorted({a for alert in alerts for a in alert.atoms}))
        st.image(_svg(smiles, highlight), caption=smiles)
    with right:
        st.dataframe(_table(asdict(desc), _DESCRIPTOR_LABELS), hide_index=True, width="stretch")
        if rule.passes:
            extra = f" (1 limit exceeded: {rule.violations[0]})" if rule.violations else ""
            st.success(f"Passes Lipinski's Rule of Five{extra}.")
        else:
            st.warning("Fails Lipinski's Rule of Five: " + "; ".join(rule.violations) + ".")
    if alerts:
        st.warning(f"{len(alerts)} structural alert(s): a reason to look closer, not a verdict.")
        st.dataframe(pd.DataFrame([{"catalogue": a.catalog, "alert": a.description, "atoms": len(a.atoms)}
                                   for a in alerts]), hide_index=True, width="stretch")
    else:
        st.caption("No PAINS or Brenk structural alerts.")
    show_3d(smiles, key=f"{key}-3d")


def show_protein(raw: str) -> None:
    c = clean("protein", raw)
    if not c.ok:
        st.error(c.error)
        return
    try:
        props, composition = _protein_facts(c.value)
    except TagLLMError as err:
        st.error(str(err))
        return
    for w in c.warnings:
        st.caption(f"⚠️ {w}")
    left, right = st.columns([1, 1])
    with left:
        st.dataframe(_table(asdict(props), _PROTEIN_LABELS), hide_index=True, width="stretch")
        if props.note:
            st.caption(props.note)
        st.code(c.value, language=None, wrap_lines=True)  # the sequence as read, in full
    with right:
        st.plotly_chart(charts.residue_figure(composition), width="stretch", key=f"aa-{hash(c.value)}")


def show_input(kind: str, raw, key: str) -> None:
    """Dispatch on the slot's kind."""
    if kind == "smiles":
        show_molecule(raw, key)
    elif kind == "protein":
        show_protein(raw)
    else:
        st.text(str(raw))
