"""Small-molecule chemistry for the UI: depictions, 3D conformers and descriptors.

Everything here takes a SMILES string and either returns something to show
(an SVG, a MolBlock, an HTML viewer) or a plain dataclass of numbers, so the
Streamlit pages never handle RDKit objects themselves.

A SMILES that RDKit cannot read raises :class:`~tagllm_core.exceptions.InputError`
with the SMILES and RDKit's reason in the message; RDKit's own stderr logging is
silenced while parsing so that the reason is reported once, by us.

Conventions worth knowing when reading the numbers:

* ``mw`` is the average molecular weight (Da) from standard atomic weights, not
  the monoisotopic mass.
* ``clogp`` is the Wildman-Crippen logP.
* ``hbd`` / ``hba`` follow Lipinski's own Rule-of-Five definitions (N-H + O-H
  count, N + O count), so that :func:`lipinski` applies the rule as published.
  They are larger than pharmacophore-style acceptor counts (aspirin: 4 not 3).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from rdkit import Chem, rdBase
from rdkit.Chem import (
    QED,
    Crippen,
    Descriptors as _RDDescriptors,
    rdCoordGen,
    rdDepictor,
    rdDistGeom,
    rdForceFieldHelpers,
    rdMolDescriptors,
)
from rdkit.Chem.Draw import rdMolDraw2D
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

from tagllm_core.exceptions import InputError
from tagllm_core.paths import ASSETS_DIR

__all__ = [
    "Descriptors",
    "LipinskiResult",
    "StructuralAlert",
    "parse_smiles",
    "mol_to_svg",
    "conformer_molblock",
    "view3d_html",
    "local_3dmol_js_path",
    "descriptors",
    "lipinski",
    "structural_alerts",
]

# ---------------------------------------------------------------------------
# Parsing

# CaptureErrorLog appeared in recent RDKit releases; without it the message
# just lacks RDKit's reason. Under concurrent parsing a capture may also pick
# up another thread's message, which only affects the wording of an error.
_capture_rdkit_errors = getattr(rdBase, "CaptureErrorLog", contextlib.nullcontext)
_LOG_PREFIX = re.compile(r"^(\[[0-9:.]+\]\s*)?(SMILES Parse Error:\s*)?")


def _parse_error_reason(log: str) -> str:
    """Condense RDKit's multi-line parse log to e.g. 'syntax error ...; check ... position 3'."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in log.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    reason = lines[0]
    position = next((line for line in lines if line.startswith("check for mistakes")), None)
    if position:
        reason += "; " + position.rstrip(":")
    return reason


def parse_smiles(smiles: str) -> Chem.Mol:
    """Parse and sanitise ``smiles``; raise :class:`InputError` if RDKit cannot.

    Parsing happens in two steps (syntax, then sanitisation) because only the
    sanitisation step tells *why* a chemically impossible SMILES is rejected
    (e.g. a pentavalent carbon), and that reason is what a chemist needs.
    """
    if not isinstance(smiles, str) or not smiles.strip():
        raise InputError("Empty SMILES: please enter a molecule.")
    text = smiles.strip()
    with rdBase.BlockLogs():
        with _capture_rdkit_errors() as capture:
            mol = Chem.MolFromSmiles(text, sanitize=False)
        if mol is None:
            reason = _parse_error_reason(getattr(capture, "messages", ""))
            raise InputError(f"Invalid SMILES {text!r}: {reason or 'RDKit could not parse it.'}")
        try:
            Chem.SanitizeMol(mol)
        except (Chem.rdchem.MolSanitizeException, ValueError, RuntimeError) as err:
            raise InputError(f"Invalid SMILES {text!r}: {err}") from err
    if mol.GetNumAtoms() == 0:
        raise InputError(f"Invalid SMILES {text!r}: it contains no atoms.")
    return mol


# ---------------------------------------------------------------------------
# 2D depiction


def mol_to_svg(
    smiles: str,
    width: int = 300,
    height: int = 220,
    highlight_atoms: Optional[Iterable[int]] = None,
) -> str:
    """Return an SVG depiction of ``smiles``, ``width`` x ``height`` pixels.

    Coordinates come from CoordGen when this RDKit build has it (it lays out
    macrocycles and fused rings more legibly than RDKit's native depictor),
    otherwise from ``rdDepictor.Compute2DCoords``. ``highlight_atoms`` are atom
    indices in SMILES order, e.g. the ``atoms`` of a :class:`StructuralAlert`.
    """
    mol = parse_smiles(smiles)
    highlight = sorted(set(int(i) for i in highlight_atoms)) if highlight_atoms else []
    bad = [i for i in highlight if not 0 <= i < mol.GetNumAtoms()]
    if bad:
        raise InputError(
            f"Atom indices {bad} do not exist in {smiles.strip()!r} ({mol.GetNumAtoms()} atoms, numbered from 0)."
        )
    # CoordGen is called directly rather than through SetPreferCoordGen, which
    # flips a process-wide switch that other threads (other sessions) share.
    if rdDepictor.IsCoordGenSupportAvailable():
        rdCoordGen.AddCoords(mol)
    else:
        rdDepictor.Compute2DCoords(mol)
    drawer = rdMolDraw2D.MolDraw2DSVG(width, height)
    # PrepareAndDrawMolecule kekulises and adds stereo wedges and chiral Hs,
    # which a bare DrawMolecule call would not.
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol, highlightAtoms=highlight)
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


# ---------------------------------------------------------------------------
# 3D conformer


def _embed(mol: Chem.Mol, seed: int) -> int:
    """Embed one ETKDGv3 conformer; return its id, or -1 if both attempts fail."""
    params = rdDistGeom.ETKDGv3()
    # rdkit's generated stubs type Boost property setters wrongly (as taking EmbedParameters)
    params.randomSeed = int(seed)  # type: ignore[assignment]
    conf_id = rdDistGeom.EmbedMolecule(mol, params)
    if conf_id < 0:
        params.useRandomCoords = True  # type: ignore[assignment]
        conf_id = rdDistGeom.EmbedMolecule(mol, params)
    return conf_id


def conformer_molblock(smiles: str, seed: int = 0xF00D) -> str:
    """Return a MolBlock with one force-field-optimised 3D conformer, hydrogens included.

    The conformer is embedded with ETKDGv3 using ``seed`` (the same seed gives
    the same coordinates), then optimised with MMFF94, or with UFF when MMFF
    has no parameters for some atom (e.g. many metals). If neither force field
    covers the molecule the ETKDG geometry is returned unoptimised. Embedding
    that fails from the usual eigenvector start is retried from random
    coordinates, which rescues many strained or large ring systems; a molecule
    that still cannot be embedded raises :class:`InputError`.
    """
    mol = Chem.AddHs(parse_smiles(smiles))
    # Logs are blocked because ETKDG and the force-field typers print every
    # atom type they lack (e.g. "UFFTYPER: Unrecognized atom type: Se2+2"),
    # which is expected here and handled by the fall-backs below.
    with rdBase.BlockLogs():
        conf_id = _embed(mol, seed)
        if conf_id < 0:
            raise InputError(
                f"Could not generate 3D coordinates for {smiles.strip()!r}: RDKit's "
                "ETKDG embedding failed, even from random starting coordinates. "
                "Check the stereochemistry; very strained or very large molecules "
                "may have no embeddable geometry."
            )
        # The return codes (0 converged, 1 ran out of iterations) are not
        # checked: a partly relaxed ETKDG geometry is still a sensible picture.
        if rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
            rdForceFieldHelpers.MMFFOptimizeMolecule(mol, confId=conf_id, maxIters=2000)
        elif rdForceFieldHelpers.UFFHasAllMoleculeParams(mol):
            rdForceFieldHelpers.UFFOptimizeMolecule(mol, confId=conf_id, maxIters=2000)
    return Chem.MolToMolBlock(mol, confId=conf_id)


# ---------------------------------------------------------------------------
# 3D viewer

_VIEWER_STYLES = {
    "stick": {"stick": {}},
    "line": {"line": {}},
    "sphere": {"sphere": {}},
    "ballstick": {"stick": {"radius": 0.15}, "sphere": {"scale": 0.25}},
}
_3DMOL_JS_NAME = "3Dmol-min.js"


def _js_search_paths() -> list[Path]:
    """Where a local copy of 3Dmol.js may be: inside py3Dmol, then the app's assets."""
    import py3Dmol  # here, not at the top: py3Dmol is in the [app] extra, and the engine runs without it

    package_dir = Path(py3Dmol.__file__).resolve().parent
    return [package_dir / _3DMOL_JS_NAME, package_dir / "js" / _3DMOL_JS_NAME, ASSETS_DIR / _3DMOL_JS_NAME]


def local_3dmol_js_path() -> Optional[Path]:
    """The local 3Dmol.js that :func:`view3d_html` inlines, or ``None`` if there is none.

    A UI can use this to warn that the 3D viewer needs internet access.
    """
    return next((p for p in _js_search_paths() if p.is_file()), None)


@functools.lru_cache(maxsize=2)
def _read_js(path: Path) -> str:
    # Half a megabyte, read once per process rather than once per viewer.
    return path.read_text(encoding="utf-8")


def _inline_script(js: str) -> str:
    """Wrap 3Dmol.js so it defines ``window.$3Dmol`` on any page.

    Shadowing ``define``/``module``/``exports`` stops its UMD header from
    registering with a page's AMD/CommonJS loader (e.g. Jupyter's RequireJS)
    instead of running; ``</script`` is escaped so the text cannot end the tag.
    Pre-resolving ``$3Dmolpromise`` makes py3Dmol's loader skip its CDN fetch.
    """
    body = js.replace("</script", "<\\/script")
    return (
        "<script>\n(function (define, module, exports) {\n"
        f"{body}\n}}).call(window);\n"
        "var $3Dmolpromise = Promise.resolve();\n</script>\n"
    )


def view3d_html(molblock: str, width: int = 480, height: int = 400, style: str = "stick") -> str:
    """Return self-contained HTML for an interactive 3Dmol.js viewer of ``molblock``.

    ``style`` is one of ``"stick"``, ``"line"``, ``"sphere"`` or ``"ballstick"``.
    The HTML is meant for ``streamlit.components.v1.html`` (or any iframe).

    Offline use: py3Dmol 2.5.5 does **not** ship 3Dmol.js; its HTML loads
    ``3Dmol-min.js`` from the jsDelivr CDN, so without network the viewer shows
    "3Dmol.js failed to load". When a local copy exists (see
    :func:`local_3dmol_js_path`: a future py3Dmol that bundles it, or
    ``assets/3Dmol-min.js``, the ``build/3Dmol-min.js`` of the npm package
    ``3dmol`` at py3Dmol's version, 2.5.5) it is inlined instead, and the HTML
    references no external script. Inlining adds about 0.5 MB per viewer.
    """
    if style not in _VIEWER_STYLES:
        raise ValueError(f"Unknown viewer style {style!r}; choose from {sorted(_VIEWER_STYLES)}.")
    if not molblock or not molblock.strip():
        raise InputError("Empty MolBlock: there is no structure to show.")
    import py3Dmol  # the [app] extra (see _js_search_paths)

    js_path = local_3dmol_js_path()
    # With the script inlined, py3Dmol's loader is never reached; a data: URI
    # keeps any CDN address out of the page all the same.
    js_kwargs = {"js": "data:text/javascript,"} if js_path else {}
    view = py3Dmol.view(width=width, height=height, **js_kwargs)
    view.addModel(molblock, "mol")
    view.setStyle(_VIEWER_STYLES[style])
    view.zoomTo()
    html = view._make_html()
    # json.dumps leaves "</" alone, so a MolBlock from an uploaded file could
    # otherwise close the <script> element early and inject markup.
    encoded = json.dumps(molblock)
    html = html.replace(encoded, encoded.replace("</", "<\\/"))
    if js_path:
        html = _inline_script(_read_js(js_path)) + html
    return html


# ---------------------------------------------------------------------------
# Descriptors and rules


@dataclass
class Descriptors:
    """Physico-chemical descriptors of one molecule (see the module notes for definitions)."""

    mw: float
    clogp: float
    tpsa: float
    hbd: int
    hba: int
    rotatable_bonds: int
    qed: float
    heavy_atoms: int
    formula: str


def descriptors(smiles: str) -> Descriptors:
    """Compute :class:`Descriptors` for ``smiles``."""
    mol = parse_smiles(smiles)
    return Descriptors(
        # rdkit's generated stubs miss the descriptors these modules define at import time
        mw=_RDDescriptors.MolWt(mol),  # type: ignore[attr-defined]
        clogp=Crippen.MolLogP(mol),  # type: ignore[attr-defined]
        tpsa=rdMolDescriptors.CalcTPSA(mol),
        hbd=rdMolDescriptors.CalcNumLipinskiHBD(mol),
        hba=rdMolDescriptors.CalcNumLipinskiHBA(mol),
        rotatable_bonds=rdMolDescriptors.CalcNumRotatableBonds(mol),
        qed=QED.qed(mol),
        heavy_atoms=mol.GetNumHeavyAtoms(),
        formula=rdMolDescriptors.CalcMolFormula(mol),
    )


@dataclass
class LipinskiResult:
    """Lipinski's Rule of Five: which limits are exceeded, and whether the molecule passes.

    As in Lipinski et al. (1997), poor oral absorption is flagged only when
    *more than one* limit is exceeded, so one violation still passes.
    """

    violations: list[str]
    passes: bool


def lipinski(d: Descriptors) -> LipinskiResult:
    """Apply the Rule of Five (MW <= 500, cLogP <= 5, HBD <= 5, HBA <= 10) to ``d``."""
    violations = []
    if d.mw > 500:
        violations.append(f"Molecular weight {d.mw:.1f} Da > 500")
    if d.clogp > 5:
        violations.append(f"cLogP {d.clogp:.2f} > 5")
    if d.hbd > 5:
        violations.append(f"H-bond donors {d.hbd} > 5")
    if d.hba > 10:
        violations.append(f"H-bond acceptors {d.hba} > 10")
    return LipinskiResult(violations=violations, passes=len(violations) <= 1)


# ---------------------------------------------------------------------------
# Structural alerts


@dataclass
class StructuralAlert:
    """One substructure filter that matched: its catalogue, its name, and the atoms it hit."""

    catalog: str  # "PAINS" or "Brenk"
    description: str
    atoms: tuple[int, ...] = field(default=())


_CATALOG_SOURCES = {
    "PAINS": (
        FilterCatalogParams.FilterCatalogs.PAINS_A,
        FilterCatalogParams.FilterCatalogs.PAINS_B,
        FilterCatalogParams.FilterCatalogs.PAINS_C,
    ),
    "Brenk": (FilterCatalogParams.FilterCatalogs.BRENK,),
}
_catalogs: Optional[dict[str, FilterCatalog]] = None
_catalogs_lock = threading.Lock()


def _filter_catalogs() -> dict[str, FilterCatalog]:
    """Build the PAINS and Brenk catalogues once per process.

    Building compiles several hundred SMARTS (tens of milliseconds), too slow
    to repeat on every rerun of a page; Streamlit serves sessions from
    threads, hence the lock.
    """
    global _catalogs
    if _catalogs is None:
        with _catalogs_lock:
            if _catalogs is None:
                built = {}
                for name, sources in _CATALOG_SOURCES.items():
                    params = FilterCatalogParams()
                    for source in sources:
                        params.AddCatalog(source)
                    built[name] = FilterCatalog(params)
                _catalogs = built
    return _catalogs


def structural_alerts(smiles: str) -> list[StructuralAlert]:
    """Return the PAINS (A, B, C) and Brenk alerts that ``smiles`` triggers, PAINS first.

    PAINS flag frequent hitters in high-throughput assays (Baell & Holloway,
    2010); Brenk flags reactive, toxic or metabolically unstable groups
    (Brenk et al., 2008). An alert is a reason to look closer, not a verdict.
    """
    mol = parse_smiles(smiles)
    alerts = []
    for name, catalog in _filter_catalogs().items():
        for entry in catalog.GetMatches(mol):
            atoms: set[int] = set()
            for match in entry.GetFilterMatches(mol):
                atoms.update(mol_idx for _query_idx, mol_idx in match.atomPairs)
            alerts.append(StructuralAlert(name, entry.GetDescription(), tuple(sorted(atoms))))
    return alerts
