"""The structure editor of the Predict page: draw a molecule, predict it.

The editor is Ketcher through the optional package ``streamlit-ketcher``, chosen because its wheel
ships the whole built frontend, the Indigo chemistry engine included (WebAssembly inlined in a web
worker), so drawing works with no network. When the package is missing the Draw mode is hidden and
the page says why; everything else runs as before. Validation of a drawn SMILES is the engine's
(``tagllm_core.domains``); this module turns the editor's output into the same rows a paste box gives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional, Sequence

from tagllm_core.domains import clean
from tagllm_core.exceptions import InputError

from .inputs import rows_from_paste

__all__ = ["PACKAGE", "DRAW", "UNAVAILABLE", "component", "available", "frontend_dir", "remote_assets",
           "input_modes", "drawable_slots", "smiles_from_editor", "drawing_problem", "rows_from_drawing",
           "draw"]

PACKAGE = "streamlit-ketcher"
DRAW = "Draw"
UNAVAILABLE = (f"Drawing a molecule needs the optional package `{PACKAGE}` "
               f"(`pip install {PACKAGE}`, or `make`); paste SMILES meanwhile.")
APPLY_HINT = "draw a molecule in the editor and press Apply under it"


def component() -> Optional[Callable[..., str]]:
    """``streamlit_ketcher.st_ketcher``, or None when the package is not installed (or fails to import)."""
    try:
        from streamlit_ketcher import st_ketcher
    except ImportError:
        return None
    return st_ketcher


def available() -> bool:
    """Whether the Draw mode can be offered."""
    return component() is not None


def frontend_dir() -> Optional[Path]:
    """The installed component's built frontend (index.html and its static files); None when not installed."""
    if component() is None:
        return None
    import streamlit_ketcher

    return Path(streamlit_ketcher.__file__).resolve().parent / "frontend"


# A script or stylesheet fetched from another host: http(s)://… or protocol-relative //…
_REMOTE_ASSET = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""",
                           re.IGNORECASE)


def remote_assets(html: str) -> list[str]:
    """The addresses of scripts and stylesheets an HTML page loads from another host (a CDN).

    An editor whose page loads any of them does not work offline.
    """
    return _REMOTE_ASSET.findall(html)


def drawable_slots(slots: Sequence[tuple[str, str]]) -> list[str]:
    """The slots an editor can fill: molecules (SMILES). ``slots``: [(slot, kind)]."""
    return [slot for slot, kind in slots if kind == "smiles"]


def input_modes(slots: Sequence[tuple[str, str]], editor_available: bool) -> list[str]:
    """The Predict page's input modes: Paste and Upload always, Draw for a tag reading a molecule when
    the editor is installed."""
    modes = ["Paste", "Upload a CSV"]
    if editor_available and drawable_slots(slots):
        modes.append(DRAW)
    return modes


def smiles_from_editor(value) -> str:
    """The editor's output -> a SMILES ("" for an empty canvas or no Apply yet).

    Ketcher may append a ChemAxon extension (``CCO |...|``) after a space; the SMILES is the first word.
    """
    text = "" if value is None else str(value).strip()
    return text.split()[0] if text else ""


def drawing_problem(smiles: str) -> Optional[str]:
    """Why a drawn SMILES cannot be predicted, in words for someone who drew it; None when it can."""
    if not smiles:
        return f"Nothing drawn yet: {APPLY_HINT}."
    cleaned = clean("smiles", smiles)
    if cleaned.ok:
        return None
    return (f"The drawing is not a valid molecule ({cleaned.error}). Check valences, charges and open "
            f"rings in the editor, then press Apply again.")


def rows_from_drawing(slots: Sequence[tuple[str, str]], drawn: dict, texts: dict) -> list[dict]:
    """Drawn molecules (and paste boxes for the other slots) -> rows, as ``inputs.rows_from_paste`` gives.

    ``slots``: [(slot, kind)]; ``drawn``: molecule slot -> editor output; ``texts``: other slot -> box text.
    One drawing is one entry, so it pairs with every entry of another box (one molecule, many proteins).
    Raises ``InputError`` naming the slot for an empty or invalid drawing.
    """
    boxes = dict(texts)
    for slot in drawable_slots(slots):
        smiles = smiles_from_editor(drawn.get(slot))
        problem = drawing_problem(smiles)
        if problem:
            raise InputError(f"'{slot}': {problem}")
        boxes[slot] = smiles
    return rows_from_paste(slots, boxes)


def draw(key: str, height: int = 450) -> str:
    """Show an editor (one per ``key``) and return what it last applied, as a SMILES ("" if nothing)."""
    editor = component()
    if editor is None:  # the page hides the mode then; this keeps a stale choice from failing
        return ""
    return smiles_from_editor(editor("", height=height, molecule_format="SMILES", key=key))
