"""Tags, their cards, and the libraries that store them.

A tag is ``p`` continuous vectors of the backbone's hidden size, spliced into
the input embeddings where its name appears in a template. A *domain* tag
(``<SMILES>``, ``<Protein>``) stands before an input of one kind; a *function*
tag (``<Solubility>``) ends a prompt and carries the task head that reads its
final hidden state, plus a snapshot of the domain tags it was trained with (so
one exported file is self-contained).

On disk a tag is one safetensors file: tensors ``vectors`` (p, d),
``head.*``, ``domain.<Name>`` (p_dom, d) and ``applicability.<slot>`` (the
training inputs' packed fingerprints, uint8; see ``applicability``) and optionally
``reference.predictions`` (its predictions over a fixed reference set; see ``reference``); its card
is JSON in the safetensors metadata. Nothing is ever pickled, and writes go to a temporary
file that is renamed into place, so a crash leaves either the old tag or the
new one, never half of one.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .backbone import BackboneFingerprint
from .exceptions import TagFormatError, TagLLMError, TagNameError, TagNotFoundError
from .paths import BUNDLED_TAGS_DIR, atomic_write, remove_stale_temp_files, user_tags_dir
from .tag_schema import MAX_CARD_CHARS, check_card, check_header_length, check_tensor_specs, check_tensor_values

__all__ = [
    "FORMAT_VERSION",
    "DEFAULT_N_TOKENS",
    "SlotSpec",
    "TagCard",
    "Tag",
    "TagInfo",
    "TagLibrary",
    "normalize_tag_name",
    "init_tag_vectors",
    "save_tag_file",
    "load_tag_file",
    "read_card",
]

FORMAT_VERSION = 1
DEFAULT_N_TOKENS = 10  # p in the paper
MAX_NAME_LENGTH = 64
SUFFIX = ".tag.safetensors"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


def normalize_tag_name(name: str) -> str:
    """``"<QED>"`` or ``"QED"`` -> ``"QED"``; raise ``TagNameError`` for unsafe names."""
    if not isinstance(name, str):
        raise TagNameError(f"A tag name must be text, not {type(name).__name__}.")
    bare = name.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1].strip()
    if not bare:
        raise TagNameError("A tag name cannot be empty.")
    if len(bare) > MAX_NAME_LENGTH:
        raise TagNameError(f"Tag name {bare[:20]!r}… is longer than {MAX_NAME_LENGTH} characters.")
    if "/" in bare or "\\" in bare or ".." in bare or "\x00" in bare:
        raise TagNameError(f"Tag name {bare!r} may not contain '/', '\\' or '..'.")
    if not _NAME_RE.match(bare):
        raise TagNameError(
            f"Tag name {bare!r} may use only letters, digits and _ . + - (and must start with a letter or digit)."
        )
    return bare


@dataclass
class SlotSpec:
    """One input of a function tag: ``kind`` is "smiles", "protein" or "text"."""

    name: str
    kind: str
    domain_tag: Optional[str] = None


@dataclass
class TagCard:
    """Everything a person (or the UI) needs to know about a tag, stored as JSON."""

    name: str
    kind: str  # "domain" | "function"
    backbone: dict[str, Any]  # BackboneFingerprint.to_dict()
    n_tokens: int
    created: float = field(default_factory=time.time)
    format_version: int = FORMAT_VERSION
    description: str = ""
    input_kind: Optional[str] = None  # domain tags: "smiles" | "protein" | "text"
    template: Optional[str] = None  # function tags
    slots: list[SlotSpec] = field(default_factory=list)  # dicts once serialised (__post_init__ turns them back)
    task: Optional[str] = None  # "regression" | "classification"
    labels: list[str] = field(default_factory=list)
    classes: list[Any] = field(default_factory=list)  # text from training; the schema admits numbers too
    label_scaling: Optional[dict[str, list[float]]] = None  # {"mean": [...], "std": [...]}
    readout: Optional[str] = None  # "last" | "last+mean"
    layers: Optional[list[int]] = None  # 1-based read-out layers; None: the final hidden state
    features: str = "none"  # "descriptors": the head also reads descriptors of the inputs
    descriptor_names: list[str] = field(default_factory=list)  # their columns, to check at prediction time
    spellings: int = 0  # SMILES spellings per molecule whose head outputs are averaged besides the canonical one
    head: Optional[dict[str, Any]] = None  # HeadConfig as dict
    metrics: dict[str, Any] = field(default_factory=dict)
    interval: Optional[dict[str, Any]] = None  # split-conformal: {"level": 0.9, "halfwidth": [...]}
    label_sample: list[Optional[float]] = field(default_factory=list)  # training labels (NaN: None), for histograms
    training: dict[str, Any] = field(default_factory=dict)  # provenance: data, stage, hyperparameters, time
    applicability: dict[str, Any] = field(default_factory=dict)  # slot -> threshold + validation curve (applicability)
    reference_set: dict[str, Any] = field(default_factory=dict)  # the set its predictions are stored over (reference)

    def __post_init__(self):
        self.slots = [s if isinstance(s, SlotSpec) else SlotSpec(**s) for s in self.slots]

    @property
    def fingerprint(self) -> BackboneFingerprint:
        return BackboneFingerprint.from_dict(self.backbone)

    def to_json(self) -> str:
        # NaN/inf (an undefined metric, say) are not JSON: store them as null.
        return json.dumps(_finite(asdict(self)), allow_nan=False, default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> "TagCard":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data) -> "TagCard":
        if not isinstance(data, dict):
            raise TagFormatError("The tag card is not a JSON object.")
        version = data.get("format_version")
        try:
            unsupported = version is None or int(version) > FORMAT_VERSION
        except (TypeError, ValueError):
            unsupported = True
        if unsupported:
            raise TagFormatError(
                f"Tag format version {version} is not supported by this Tag-LLM Studio (reads up to {FORMAT_VERSION})."
            )
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise TagFormatError(f"The tag card is incomplete: {err}") from err


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj):
    value = float(obj)  # numpy scalars
    return value if math.isfinite(value) else None


@dataclass
class Tag:
    """A tag in memory. ``vectors``: (p, d) float32."""

    card: TagCard
    vectors: torch.Tensor
    head_state: dict[str, torch.Tensor] = field(default_factory=dict)  # "weight" (out, in), "bias" (out,)
    domain_vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # domain tag name -> (p_dom, d)
    # slot -> (N, bytes) uint8, packed bits
    reference_fingerprints: dict[str, torch.Tensor] = field(default_factory=dict)
    reference_predictions: Optional[torch.Tensor] = None  # (n, n_outputs) over the reference set (reference)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def kind(self) -> str:
        return self.card.kind


def init_tag_vectors(embedding: torch.Tensor, n_tokens: int = DEFAULT_N_TOKENS, noise: float = 0.02,
                     generator: Optional[torch.Generator] = None,
                     from_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Initial tag vectors, (n_tokens, d) float32.

    As in the paper: the mean vocabulary embedding, rescaled to the average
    token-embedding norm, plus noise of relative size ``noise``. With
    ``from_ids`` (token ids of a text such as "solubility"), the vectors start
    from those tokens' embeddings instead, cycled to length ``n_tokens``.
    """
    emb = embedding.detach().float().cpu()
    avg_norm = emb.norm(dim=1).mean()
    if from_ids is not None and len(from_ids) > 0:
        base = emb[from_ids.long().cpu()]
        base = base[torch.arange(n_tokens) % base.shape[0]]
    else:
        mean = emb.mean(0)
        base = (mean / mean.norm() * avg_norm).expand(n_tokens, -1)
    noise_t = torch.randn(n_tokens, emb.shape[1], generator=generator) * (noise * avg_norm / emb.shape[1] ** 0.5)
    return (base + noise_t).contiguous()


def save_tag_file(tag: Tag, path: Path, replace: bool = True) -> None:
    """Write ``tag`` to ``path`` atomically; ``replace=False``: ``FileExistsError`` if the name is taken."""
    tensors = {"vectors": tag.vectors.detach().float().cpu().contiguous()}
    for k, v in tag.head_state.items():
        tensors[f"head.{k}"] = v.detach().float().cpu().contiguous()
    for k, v in tag.domain_vectors.items():
        tensors[f"domain.{k}"] = v.detach().float().cpu().contiguous()
    if tag.reference_predictions is not None:
        tensors["reference.predictions"] = tag.reference_predictions.detach().float().cpu().contiguous()
    # Loading refuses non-finite tensors, so writing one would leave a tag nobody can open.
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise TagFormatError(f"Refusing to save <{tag.card.name}>: {', '.join(bad)} contain NaN or infinity.")
    for k, v in tag.reference_fingerprints.items():  # bits, not numbers: kept uint8
        tensors[f"applicability.{k}"] = v.detach().cpu().to(torch.uint8).contiguous()
    meta = {"format": "tagllm-tag", "card": tag.card.to_json()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta), replace=replace)


def _open_checked(path: Path):
    path = Path(path)
    if not path.is_file():
        raise TagNotFoundError(f"No tag file at {path}.")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # A safetensors header length can itself start with pickle's magic bytes (e.g. 896 = 0x380);
    # the JSON header that follows it tells the two apart.
    looks_like_safetensors = len(head) == 9 and head[8:9] == b"{"
    if not looks_like_safetensors and head.startswith(_PICKLE_MAGIC):
        raise TagFormatError(
            f"{path.name} is a pickle/PyTorch file. Tag-LLM Studio only reads safetensors tags, "
            f"because pickle files can run code when opened."
        )
    check_header_length(head, path.name)  # before safetensors reads (and allocates) the declared header
    try:
        return safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own types for every kind of corruption
        raise TagFormatError(f"{path.name} is not a readable tag file (corrupted or not safetensors): {err}") from err


def read_card(path: Path) -> TagCard:
    """Read only the card (the header), without loading the tensors; the card is checked against the schema."""
    with _open_checked(path) as f:
        meta = f.metadata() or {}
    return _card_from_meta(meta, Path(path).name)


def _card_from_meta(meta: dict, where: str) -> TagCard:
    if meta.get("format") != "tagllm-tag" or "card" not in meta:
        raise TagFormatError(f"{where} is a safetensors file but not a Tag-LLM tag (no card).")
    text = meta["card"]
    if len(text) > MAX_CARD_CHARS:
        raise TagFormatError(f"{where}: the card is {len(text):,} characters; a tag card is at most "
                             f"{MAX_CARD_CHARS:,}.")
    try:
        data = json.loads(text)
    except RecursionError as err:  # "[[[[…" a hundred thousand deep
        raise TagFormatError(f"{where} has a corrupted card: JSON nested too deeply.") from err
    except ValueError as err:  # JSONDecodeError, and integers of thousands of digits
        raise TagFormatError(f"{where} has a corrupted card: {err}") from err
    if not isinstance(data, dict):
        raise TagFormatError(f"{where} has a corrupted card: not a JSON object.")
    # Every field is checked before the card (or anything it sizes) is built.
    check_card(data, where)
    return TagCard.from_dict(data)


def load_tag_file(path: Path) -> Tag:
    """Read and check a tag file: card against the schema, tensor names/dtypes/shapes from the header, then
    the tensor data (finite values). Any problem is a ``TagFormatError`` naming the field or tensor."""
    name = Path(path).name
    try:
        with _open_checked(path) as f:
            card = _card_from_meta(f.metadata() or {}, name)
            specs = {}
            for key in f.keys():
                view = f.get_slice(key)
                specs[key] = (view.get_dtype(), view.get_shape())
            check_tensor_specs(card, specs, name)  # shapes from the header: no tensor data read yet
            tensors = {k: f.get_tensor(k) for k in specs}
    except TagLLMError:
        raise
    except Exception as err:  # safetensors raises its own types for corrupted data
        raise TagFormatError(f"{name}: tensor data is corrupted: {err}") from err
    check_tensor_values(tensors, name)
    head = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    domains = {k[7:]: v for k, v in tensors.items() if k.startswith("domain.")}
    references = {k[14:]: v for k, v in tensors.items() if k.startswith("applicability.")}
    return Tag(card, tensors["vectors"], head, domains, references, tensors.get("reference.predictions"))


@dataclass
class TagInfo:
    """A row of the library listing."""

    card: TagCard
    source: str  # "bundled" | "user"
    path: Path
    size_bytes: int

    @property
    def name(self) -> str:
        return self.card.name


class TagLibrary:
    """The bundled (read-only package data, ``tagllm_core/data/tags/<backbone-slug>/``) and user (writable)
    tags for one backbone.

    Names are unique across both: a user tag may not shadow a bundled one.
    """

    def __init__(self, fingerprint: BackboneFingerprint, user_dir: Optional[Path] = None,
                 bundled_root: Optional[Path] = None):
        self.fingerprint = fingerprint
        self.user_dir = Path(user_dir) if user_dir else user_tags_dir() / fingerprint.slug
        self.bundled_dir = Path(bundled_root or BUNDLED_TAGS_DIR) / fingerprint.slug
        # A save killed mid-write leaves a hidden temporary file (never listed: it lacks the suffix); clear
        # out those whose writer is dead, never one a live writer holds.
        remove_stale_temp_files(self.user_dir)

    def _path(self, folder: Path, name: str) -> Path:
        return folder / f"{normalize_tag_name(name)}{SUFFIX}"

    def list(self, kind: Optional[str] = None) -> list[TagInfo]:
        """Every readable tag; unreadable files are skipped here and reported by ``problems()``."""
        out = []
        for source, folder in (("bundled", self.bundled_dir), ("user", self.user_dir)):
            for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
                try:
                    card = read_card(path)
                except TagLLMError:
                    continue
                if kind is None or card.kind == kind:
                    out.append(TagInfo(card, source, path, path.stat().st_size))
        return out

    # ``builtins.list``: in the class body from here on, ``list`` names the method above
    def problems(self) -> builtins.list[str]:
        msgs = []
        for folder in (self.bundled_dir, self.user_dir):
            for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
                try:
                    read_card(path)
                except TagLLMError as err:
                    msgs.append(str(err))
        return msgs

    def find(self, name: str) -> TagInfo:
        bare = normalize_tag_name(name)
        for source, folder in (("bundled", self.bundled_dir), ("user", self.user_dir)):
            path = self._path(folder, bare)
            if path.is_file():
                return TagInfo(read_card(path), source, path, path.stat().st_size)
        available = ", ".join(f"<{t.name}>" for t in self.list()) or "none"
        raise TagNotFoundError(f"No tag named <{bare}> for backbone {self.fingerprint.name}. Available: {available}.")

    def exists(self, name: str) -> bool:
        try:
            self.find(name)
            return True
        except TagNotFoundError:
            return False

    def get(self, name: str) -> Tag:
        info = self.find(name)
        tag = load_tag_file(info.path)
        tag.card.fingerprint.require_match(self.fingerprint, f"Tag <{tag.name}>")
        return tag

    def save(self, tag: Tag, overwrite: bool = False) -> Path:
        name = normalize_tag_name(tag.card.name)
        tag.card.fingerprint.require_match(self.fingerprint, f"Tag <{name}>")
        if self._path(self.bundled_dir, name).exists():
            raise TagNameError(f"<{name}> is a bundled tag; choose another name.")
        path = self._path(self.user_dir, name)
        taken = f"A user tag named <{name}> already exists; delete it first or choose another name."
        if path.exists() and not overwrite:
            raise TagNameError(taken)
        try:  # the check above is a courtesy; without overwrite the write itself claims the name atomically
            save_tag_file(tag, path, replace=overwrite)
        except FileExistsError:
            raise TagNameError(taken) from None
        return path

    def delete(self, name: str) -> None:
        info = self.find(name)
        if info.source != "user":
            raise TagLLMError(f"<{info.name}> is bundled with the app and cannot be deleted.")
        info.path.unlink()

    def export(self, name: str, dest: Path) -> Path:
        """Copy a tag to ``dest`` (a file, or a folder to put ``<name>.tag.safetensors`` in)."""
        info = self.find(name)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / info.path.name
        atomic_write(dest, lambda tmp: shutil.copyfile(info.path, tmp))
        return dest

    def import_file(self, src: Path, overwrite: bool = False) -> TagInfo:
        """Validate a tag file fully (card, tensors, backbone) and copy it into the user library."""
        tag = load_tag_file(Path(src))
        tag.card.fingerprint.require_match(self.fingerprint, f"The imported tag <{tag.name}>")
        path = self.save(tag, overwrite=overwrite)
        return TagInfo(tag.card, "user", path, path.stat().st_size)
