"""The tag file schema: every card field and every tensor checked, with bounded sizes, before anything is built.

A tag file may come from anyone (the Library page imports uploads), and what
a card declares is later turned into memory: ``head.n_outputs`` x
``head.in_dim`` becomes a ``nn.Linear``, ``label_scaling`` a ``LabelScaler``,
``classes`` the columns of a results table. So a file is refused, with a
``TagFormatError`` naming the field, unless

* the safetensors header is at most ``MAX_HEADER_BYTES`` and the card JSON at
  most ``MAX_CARD_CHARS`` (checked before either is parsed);
* every card field has its type, lies in its range, and agrees with the
  others (head width = read-out width + descriptor columns; one scaling,
  interval and class per output; template, slots and name agree);
* every tensor is float32 with exactly the shape the card implies, read from
  the header before any tensor data is loaded; tensors nobody reads are refused
  (the one other dtype: ``applicability.<slot>``, packed fingerprint bits, uint8,
  (n_reference, bytes) as the card's ``applicability`` declares; ``reference.predictions`` is float32
  (n, n_outputs) as the card's ``reference_set`` declares);
* every value is finite (and standard deviations positive) once loaded.

Fields that later versions added (``layers``, ``features``, ``n_extra``,
``standardize``…) may be absent: older cards keep loading. Unknown top-level
fields are ignored, as ``TagCard.from_json`` does, so a newer writer's extras
do not lock out an older reader.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NoReturn, TypeGuard

import torch

from .domains import MAX_SPELLINGS
from .exceptions import TagFormatError, TagLLMError
from .forest import FOREST_INPUTS
from .heads import TASKS

__all__ = ["MAX_HEADER_BYTES", "MAX_CARD_CHARS", "MAX_TOKENS", "MAX_OUTPUTS", "check_header_length",
           "check_card", "check_tensor_specs", "check_tensor_values"]

# Bounds far above any real tag (p = 10, one to a few outputs, hidden 576-8192) and far below
# what would hurt a server: the largest head they allow is checked against the file's own data.
MAX_HEADER_BYTES = 8 << 20
MAX_CARD_CHARS = 4 << 20
MAX_TOKENS = 256  # p, vectors per tag (the paper uses 10)
MAX_HIDDEN = 65536
MAX_VOCAB = 10_000_000
MAX_OUTPUTS = 1024  # regression targets or classes
MAX_LAYER = 1024  # a read-out layer number
MAX_READ_LAYERS = 64  # layers read side by side
MAX_EXTRA = 65536  # descriptor columns
MAX_SLOTS = 16
MAX_TEXT = 100_000  # description, template
MAX_ITEMS = 100_000  # label_sample, descriptor_names
MAX_DEPTH = 16  # nesting of free-form dicts (metrics, training)

KINDS = ("domain", "function")
FEATURES = ("none", "descriptors")
FUNCTION_ONLY = ("template", "task", "readout", "layers", "head", "label_scaling", "interval")
HEAD_KEYS = ("task", "n_outputs", "in_dim", "n_extra", "standardize", "forest_trees", "forest_nodes", "forest_depth",
             "forest_input")
MAX_FOREST_TREES = 10_000
MAX_FOREST_NODES = 1 << 23  # forest.MAX_NODES: node numbers stay exact in float32
MAX_FOREST_DEPTH = 1024
DTYPE = "F32"  # what save_tag_file writes; the docs promise CPU float32
_SHA_RE = re.compile(r"^[0-9a-f]{1,128}$")
_MISSING = object()


def _is_real(value: object) -> TypeGuard[int | float]:
    """An int or float, but not a bool (an int subclass, never a quantity here)."""
    return type(value) in (int, float)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


class _Checker:
    """Raises ``TagFormatError("<file>: card field 'x.y' must …")``; one instance per file."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, problem: str, value: Any = _MISSING) -> NoReturn:
        got = "" if value is _MISSING else f" (got {_show(value)})"
        raise TagFormatError(f"{self.where}: card field '{field}' {problem}{got}.")

    def integer(self, value, field: str, lo: int, hi: int) -> int:
        # bool is an int in Python but never a size
        if type(value) is not int or not lo <= value <= hi:
            self.fail(field, f"must be a whole number from {lo} to {hi}", value)
        return value

    def number(self, value, field: str, allow_none: bool = False) -> None:
        if value is None and allow_none:
            return
        if not _is_real(value) or not math.isfinite(value):
            self.fail(field, "must be a finite number", value)

    def text(self, value, field: str, max_len: int = MAX_TEXT, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or len(value) > max_len:
            self.fail(field, f"must be text of at most {max_len} characters", value)

    def choice(self, value, field: str, options: tuple, optional: bool = False) -> None:
        if value is None and optional:
            return
        if value not in options or not isinstance(value, str):
            self.fail(field, f"must be one of {', '.join(options)}{' or null' if optional else ''}", value)

    def items(self, value, field: str, max_len: int) -> list:
        if not isinstance(value, list) or len(value) > max_len:
            self.fail(field, f"must be a list of at most {max_len} items", value)
        return value

    def tree(self, value, field: str, depth: int = 0) -> None:
        """Free-form JSON (metrics, training provenance): only bounded nesting is required."""
        if depth > MAX_DEPTH:
            self.fail(field, f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                self.tree(v, f"{field}.{k}", depth + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.tree(v, f"{field}[{i}]", depth + 1)
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            self.fail(field, "holds a value that is not JSON", value)  # pragma: no cover - json.loads gives JSON

    def mapping(self, value, field: str, optional: bool = False) -> dict:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(field, "must be a JSON object", value)
        return value


def check_header_length(data: bytes, where: str) -> None:
    """Refuse a safetensors header longer than ``MAX_HEADER_BYTES`` before safetensors reads it.

    ``data``: the file's first 8 bytes (little-endian header length).
    """
    if len(data) >= 8:
        n = int.from_bytes(data[:8], "little")
        if n > MAX_HEADER_BYTES:
            raise TagFormatError(f"{where} is not a readable tag file (corrupted or not safetensors): it declares "
                                 f"a {n:,}-byte header, and a tag's header is at most {MAX_HEADER_BYTES:,} bytes.")


def check_card(data: dict, where: str) -> None:
    """Validate a parsed card (the JSON object) completely; raise ``TagFormatError`` naming the first bad field."""
    from .domains import KINDS as INPUT_KINDS
    from .model import READOUTS  # here, not at the top: model -> templates -> tags -> this module

    c = _Checker(where)
    version = data.get("format_version")
    from .tags import FORMAT_VERSION
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise TagFormatError(f"{where}: tag format version {_show(version)} is not supported by this "
                             f"Tag-LLM Studio (reads up to {FORMAT_VERSION}).")
    for required in ("name", "kind", "backbone", "n_tokens"):
        if required not in data:
            c.fail(required, "is missing")
    _check_name(c, data["name"], "name")
    c.choice(data["kind"], "kind", KINDS)
    backbone = c.mapping(data["backbone"], "backbone")
    for key in ("name", "hidden_size", "vocab_size", "embedding_sha256"):
        if key not in backbone:
            c.fail(f"backbone.{key}", "is missing")
    c.text(backbone["name"], "backbone.name", 256)
    hidden = c.integer(backbone["hidden_size"], "backbone.hidden_size", 1, MAX_HIDDEN)
    c.integer(backbone["vocab_size"], "backbone.vocab_size", 1, MAX_VOCAB)
    sha = backbone["embedding_sha256"]
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        c.fail("backbone.embedding_sha256", "must be a lower-case hex digest", sha)
    c.integer(data["n_tokens"], "n_tokens", 1, MAX_TOKENS)
    if "created" in data:
        c.number(data["created"], "created")
    c.text(data.get("description", ""), "description")
    c.choice(data.get("input_kind"), "input_kind", INPUT_KINDS, optional=True)
    c.text(data.get("template"), "template", optional=True)
    c.choice(data.get("task"), "task", TASKS, optional=True)
    c.choice(data.get("readout"), "readout", READOUTS, optional=True)
    c.choice(data.get("features", "none"), "features", FEATURES)
    c.integer(data.get("spellings", 0), "spellings", 0, MAX_SPELLINGS)
    for i, label in enumerate(c.items(data.get("labels", []), "labels", MAX_OUTPUTS)):
        c.text(label, f"labels[{i}]", 1000)
    for i, name in enumerate(c.items(data.get("descriptor_names", []), "descriptor_names", MAX_EXTRA)):
        c.text(name, f"descriptor_names[{i}]", 1000)
    for i, value in enumerate(c.items(data.get("classes", []), "classes", MAX_OUTPUTS)):
        if isinstance(value, (list, dict)) or (isinstance(value, str) and len(value) > 1000):
            c.fail(f"classes[{i}]", "must be a short text or a number", value)
        if isinstance(value, float) and not math.isfinite(value):
            c.fail(f"classes[{i}]", "must be finite", value)
    for i, value in enumerate(c.items(data.get("label_sample", []), "label_sample", MAX_ITEMS)):
        c.number(value, f"label_sample[{i}]", allow_none=True)  # NaN labels were stored as null
    _check_slots(c, data.get("slots", []), INPUT_KINDS)
    _check_metrics(c, data.get("metrics", {}))
    c.tree(c.mapping(data.get("training", {}), "training"), "training")
    _check_applicability(c, data)
    if data["kind"] == "domain":
        if data.get("reference_set"):
            c.fail("reference_set", "must be empty for a domain tag", data["reference_set"])
        # a domain tag has no task: nothing may later be built from these
        for key in FUNCTION_ONLY:
            if data.get(key) is not None:
                c.fail(key, "must be null: a domain tag has no task head", data[key])
        if data.get("slots"):
            c.fail("slots", "must be empty for a domain tag", data["slots"])
        return
    _check_function(c, data, hidden)


def _check_slots(c: _Checker, slots, input_kinds: tuple) -> None:
    for i, slot in enumerate(c.items(slots, "slots", MAX_SLOTS)):
        slot = c.mapping(slot, f"slots[{i}]")
        if set(slot) - {"name", "kind", "domain_tag"} or "name" not in slot or "kind" not in slot:
            c.fail(f"slots[{i}]", "must have exactly name, kind and domain_tag", slot)
        if not isinstance(slot["name"], str) or not slot["name"].isidentifier() or len(slot["name"]) > 64:
            c.fail(f"slots[{i}].name", "must be a simple identifier", slot["name"])
        c.choice(slot["kind"], f"slots[{i}].kind", input_kinds)
        if slot.get("domain_tag") is not None:
            _check_name(c, slot["domain_tag"], f"slots[{i}].domain_tag")


def _check_name(c: _Checker, value, field: str) -> None:
    from .tags import normalize_tag_name

    try:
        ok = isinstance(value, str) and normalize_tag_name(value) == value
    except TagLLMError as err:
        c.fail(field, f"is not a valid tag name: {err}")
    if not ok:
        c.fail(field, "must be a bare tag name such as Solubility", value)


def _check_metrics(c: _Checker, metrics) -> None:
    metrics = c.mapping(metrics, "metrics")
    c.tree(metrics, "metrics")
    # the pages read these two as objects of numbers
    c.mapping(metrics.get("valid"), "metrics.valid", optional=True)
    for key, value in c.mapping(metrics.get("baselines"), "metrics.baselines", optional=True).items():
        c.mapping(value, f"metrics.baselines.{key}")
        versus = c.mapping(value.get("versus_tag"), f"metrics.baselines.{key}.versus_tag", optional=True)
        for name in ("difference", "low", "high", "level") if versus else ():
            number = versus.get(name)
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                c.fail(f"metrics.baselines.{key}.versus_tag.{name}", "must be a number", number)
        if versus and (not isinstance(versus.get("metric"), str) or not isinstance(versus.get("larger_is_better"), bool)
                       or isinstance(versus.get("n_boot"), bool) or not isinstance(versus.get("n_boot"), int)):
            c.fail(f"metrics.baselines.{key}.versus_tag", "must name its metric, its direction and its resamples",
                   versus)


def _check_function(c: _Checker, data: dict, hidden: int) -> None:
    """The fields a function tag needs, and how they agree with each other and with the head."""
    from .model import readout_dim

    for required in ("template", "task", "readout", "head"):
        if data.get(required) is None:
            c.fail(required, "is required for a function tag")
    slots = data.get("slots", [])
    if not slots:
        c.fail("slots", "must list at least one input")
    _check_template(c, data, slots)

    task = data["task"]
    head = c.mapping(data["head"], "head")
    unknown = sorted(set(head) - set(HEAD_KEYS))
    if unknown:
        c.fail(f"head.{unknown[0]}", f"is not a head setting (known: {', '.join(HEAD_KEYS)})")
    for key in ("task", "n_outputs", "in_dim"):
        if key not in head:
            c.fail(f"head.{key}", "is missing")
    if head["task"] != task:
        c.fail("head.task", f"must equal the card's task {task!r}", head["task"])
    n_out = c.integer(head["n_outputs"], "head.n_outputs", 2 if task == "classification" else 1, MAX_OUTPUTS)
    n_extra = c.integer(head.get("n_extra", 0), "head.n_extra", 0, MAX_EXTRA)
    if type(head.get("standardize", False)) is not bool:
        c.fail("head.standardize", "must be true or false", head.get("standardize"))
    trees = c.integer(head.get("forest_trees", 0), "head.forest_trees", 0, MAX_FOREST_TREES)
    nodes = c.integer(head.get("forest_nodes", 0), "head.forest_nodes", 0, MAX_FOREST_NODES)
    c.integer(head.get("forest_depth", 0), "head.forest_depth", 0, MAX_FOREST_DEPTH)
    reads = head.get("forest_input", "descriptors")
    if reads not in FOREST_INPUTS:
        c.fail("head.forest_input", f"must be one of {', '.join(FOREST_INPUTS)}", reads)
    if nodes and (task != "regression" or (reads == "descriptors" and not n_extra) or not 1 <= trees <= nodes):
        c.fail("head.forest_nodes", "a forest needs a regression head, descriptors if it reads them, and at least "
                                    "one node per tree", nodes)
    if trees and not nodes:
        c.fail("head.forest_trees", "must be 0 without forest nodes", trees)
    layers = data.get("layers")
    if layers is not None:
        c.items(layers, "layers", MAX_READ_LAYERS)
        if not layers:
            c.fail("layers", "must name at least one layer, or be null for the final state")
        for i, layer in enumerate(layers):
            c.integer(layer, f"layers[{i}]", 1, MAX_LAYER)
        if len(set(layers)) != len(layers):
            c.fail("layers", "repeat a layer", layers)
    expected = readout_dim(data["readout"], hidden, len(layers or [0])) + n_extra
    c.integer(head["in_dim"], "head.in_dim", 1, MAX_HIDDEN * 2 * MAX_READ_LAYERS + MAX_EXTRA)
    if head["in_dim"] != expected:
        c.fail("head.in_dim", f"must be {expected} (the {data['readout']} read-out of {len(layers or [0])} "
                              f"layer(s) of width {hidden}, plus head.n_extra = {n_extra} descriptor columns)",
               head["in_dim"])
    names = data.get("descriptor_names", [])
    if data.get("features", "none") == "descriptors":
        if n_extra < 1:
            c.fail("features", "is 'descriptors' but the head reads no descriptor columns (head.n_extra is 0)")
        if len(names) != n_extra:
            c.fail("descriptor_names", f"must list the head's {n_extra} descriptor columns", len(names))
    elif n_extra:
        c.fail("features", f"must be 'descriptors' when the head reads {n_extra} descriptor columns",
               data.get("features", "none"))

    classes = data.get("classes", [])
    scaling = data.get("label_scaling")
    if task == "classification":
        if classes and len(classes) != n_out:
            c.fail("classes", f"must list the head's {n_out} classes", len(classes))
        if scaling is not None:
            c.fail("label_scaling", "must be null for a classification tag", scaling)
    elif scaling is not None:
        scaling = c.mapping(scaling, "label_scaling")
        if set(scaling) != {"mean", "std"}:
            c.fail("label_scaling", "must have exactly 'mean' and 'std'", sorted(scaling))
        for key in ("mean", "std"):
            values = c.items(scaling[key], f"label_scaling.{key}", MAX_OUTPUTS)
            if len(values) != n_out:
                c.fail(f"label_scaling.{key}", f"must have one value per output ({n_out})", len(values))
            for i, v in enumerate(values):
                c.number(v, f"label_scaling.{key}[{i}]")
                if key == "std" and v <= 0:
                    c.fail(f"label_scaling.std[{i}]", "must be positive", v)
    _check_reference_set(c, data.get("reference_set"), n_out)
    interval = data.get("interval")
    if interval is not None:
        interval = c.mapping(interval, "interval")
        c.tree(interval, "interval")
        level = interval.get("level")
        if not _is_real(level) or not 0 < level < 1:
            c.fail("interval.level", "must be a number between 0 and 1", level)
        half = interval.get("halfwidth")
        if not isinstance(half, list) or len(half) not in {1, n_out}:
            c.fail("interval.halfwidth", f"must be a list of 1 or {n_out} half-widths", half)
        for i, v in enumerate(half):
            c.number(v, f"interval.halfwidth[{i}]")
            if v < 0:
                c.fail(f"interval.halfwidth[{i}]", "must not be negative", v)


def _check_template(c: _Checker, data: dict, slots: list) -> None:
    from .templates import Template

    try:
        template = Template.parse(data["template"])
    except TagLLMError as err:
        c.fail("template", f"cannot be parsed: {err}")
    if template.function_tag != data["name"]:
        c.fail("template", f"must end with the tag's own name <{data['name']}>", template.function_tag)
    in_template = [(s.name, s.domain_tag) for s in template.slots]
    in_card = [(s["name"], s.get("domain_tag")) for s in slots]
    if sorted(in_template) != sorted(in_card):
        c.fail("slots", f"must match the template's inputs {in_template}", in_card)


def check_tensor_specs(card, specs: dict, where: str) -> None:
    """``specs``: tensor name -> (safetensors dtype, shape) read from the header, before any data is loaded.

    Every tensor must be one the card implies, float32, of exactly the implied shape.
    """
    hidden = card.fingerprint.hidden_size

    def fail(name: str, problem: str) -> NoReturn:
        raise TagFormatError(f"{where}: tensor '{name}' {problem}.")

    expected: dict[str, tuple[int, ...]] = {"vectors": (card.n_tokens, hidden)}
    if card.kind == "function":
        head = card.head
        expected["head.weight"] = (head["n_outputs"], head["in_dim"])
        expected["head.bias"] = (head["n_outputs"],)
        if head.get("standardize"):
            expected["head.x_mean"] = expected["head.x_std"] = (head["in_dim"],)
        if head.get("forest_nodes"):
            from .heads import HeadConfig, forest_shapes

            shapes = forest_shapes(HeadConfig(**head))
            expected.update({f"head.{k}": v for k, v in shapes.items()})
            expected["head.blend"] = (2, head["n_outputs"])
        if card.reference_set:
            expected[REFERENCE_TENSOR] = (card.reference_set["n"], card.reference_set["n_outputs"])
    _check_applicability_specs(card, specs, fail)
    for name in specs:
        if name in expected or name.startswith(APPLICABILITY_PREFIX):
            continue
        if card.kind == "function" and name.startswith("domain."):
            try:
                from .tags import normalize_tag_name
                ok = normalize_tag_name(name[7:]) == name[7:]
            except TagLLMError:
                ok = False
            if not ok:
                fail(name, "does not name a domain tag")
            continue
        if name == REFERENCE_TENSOR:
            fail(name, "has no entry in the card's reference_set")
        fail(name, "is not part of a tag of this kind" + (
            " (the head does not standardise its input)" if name in ("head.x_mean", "head.x_std") else ""))
    for name, shape in expected.items():
        if name not in specs:
            fail(name, "is missing")
    for s in card.slots:
        if s.domain_tag and f"domain.{s.domain_tag}" not in specs:
            fail(f"domain.{s.domain_tag}", f"is missing: the function tag's copy of <{s.domain_tag}>")
    for name, (dtype, shape) in specs.items():
        if name.startswith(APPLICABILITY_PREFIX):
            continue  # checked above: uint8 bits
        if dtype != DTYPE:
            fail(name, f"has dtype {dtype}; tag files hold float32 ({DTYPE})")
        shape = tuple(shape)
        if name in expected:
            if shape != expected[name]:
                fail(name, f"has shape {shape}, the card implies {expected[name]}")
        elif len(shape) != 2 or shape[1] != hidden or not 1 <= shape[0] <= MAX_TOKENS:
            fail(name, f"has shape {shape}; a domain tag is (1..{MAX_TOKENS}, {hidden})")


def check_tensor_values(tensors: dict, where: str) -> None:
    """Loaded float32 tensors: all finite, standard deviations positive."""
    for name, value in tensors.items():
        if not torch.isfinite(value).all():
            raise TagFormatError(f"{where}: tensor '{name}' contains NaN or infinity.")
    std = tensors.get("head.x_std")
    if std is not None and not (std > 0).all():
        raise TagFormatError(f"{where}: tensor 'head.x_std' has a standard deviation that is not positive.")
    if "head.forest_left" in tensors:
        _check_forest_values(tensors, where)


def _check_forest_values(tensors: dict, where: str) -> None:
    """A forest's node arrays must point inside the forest: children and roots are node numbers (or -1 for
    a leaf's children), features are columns the forest reads, and the blend's weights are not negative."""
    nodes = len(tensors["head.forest_left"])
    width = len(tensors["head.forest_fill"])  # its shape was checked against the head's

    def whole(name: str, low: int, high: int) -> None:
        value = tensors[f"head.{name}"]
        if not ((value == value.round()) & (value >= low) & (value < high)).all():
            raise TagFormatError(f"{where}: tensor 'head.{name}' must hold whole numbers from {low} to {high - 1}.")

    whole("forest_left", -1, nodes)
    whole("forest_right", -1, nodes)
    whole("forest_feature", -1, width)
    whole("forest_roots", 0, nodes)
    if not (tensors["head.blend"] >= 0).all():
        raise TagFormatError(f"{where}: tensor 'head.blend' holds a negative weight.")


# --- applicability domain (``applicability``): packed training fingerprints and their threshold ---------

APPLICABILITY_PREFIX = "applicability."
MAX_CURVE_BINS = 100


def _check_applicability(c: _Checker, data: dict) -> None:
    """``applicability``: {slot: {kind, n_reference, threshold, curve…}} for SMILES/protein slots of a
    function tag; absent (older tags) is fine. The sizes bound the tensors ``_check_applicability_specs``
    then accepts."""
    from .applicability import MAX_REFERENCE_ROWS, PACKED_WIDTH

    domain = c.mapping(data.get("applicability"), "applicability", optional=True)
    if not domain:
        return
    kinds = {s.get("name"): s.get("kind") for s in data.get("slots", [])}
    c.tree(domain, "applicability")
    for slot, info in domain.items():
        f = f"applicability.{slot}"
        info = c.mapping(info, f)
        if slot not in kinds or kinds[slot] not in PACKED_WIDTH or info.get("kind") != kinds[slot]:
            c.fail(f"{f}.kind", "must name a SMILES or protein input of the tag, with its kind", info.get("kind"))
        c.integer(info.get("n_reference"), f"{f}.n_reference", 1, MAX_REFERENCE_ROWS[kinds[slot]])
        # shown on the library card: numbers and short texts, or absent
        if "n_training" in info:
            c.integer(info["n_training"], f"{f}.n_training", 0, MAX_VOCAB * 100)
        for key in ("overall_error", "ratio"):
            c.number(info.get(key), f"{f}.{key}", allow_none=True)
        for key in ("method", "error_metric"):
            c.text(info.get(key), f"{f}.{key}", 200, optional=True)
        threshold = info.get("threshold")
        c.number(threshold, f"{f}.threshold")
        assert threshold is not None  # c.number refused None
        if not 0 <= threshold <= 1:
            c.fail(f"{f}.threshold", "must be a similarity from 0 to 1", threshold)
        curve = c.mapping(info.get("curve"), f"{f}.curve")
        edges = c.items(curve.get("edges"), f"{f}.curve.edges", MAX_CURVE_BINS + 1)
        for key in ("error", "count"):
            if len(c.items(curve.get(key), f"{f}.curve.{key}", MAX_CURVE_BINS)) != len(edges) - 1:
                c.fail(f"{f}.curve.{key}", "must have one value per bin (edges minus one)")
        for key in ("edges", "error", "count"):
            for i, v in enumerate(curve[key]):
                c.number(v, f"{f}.curve.{key}[{i}]", allow_none=key == "error")


def _check_applicability_specs(card, specs: dict, fail: Callable[[str, str], NoReturn]) -> None:
    """One ``applicability.<slot>`` tensor per card entry: uint8, (n_reference, bytes of the kind)."""
    from .applicability import PACKED_WIDTH

    domain = (card.applicability or {}) if card.kind == "function" else {}
    for name, (dtype, shape) in specs.items():
        if not name.startswith(APPLICABILITY_PREFIX):
            continue
        info = domain.get(name[len(APPLICABILITY_PREFIX):])
        if info is None:
            fail(name, "has no entry in the card's applicability")
        expected = (info["n_reference"], PACKED_WIDTH[info["kind"]])
        if dtype != "U8" or tuple(shape) != expected:
            fail(name, f"is {dtype} {tuple(shape)}; the card implies uint8 (U8) {expected}")
    for slot in domain:
        if APPLICABILITY_PREFIX + slot not in specs:
            fail(APPLICABILITY_PREFIX + slot, "is missing: the card has an applicability threshold for it")


# --- reference-set percentiles (``reference``): the tag's predictions over a fixed set of molecules -------

REFERENCE_TENSOR = "reference.predictions"
MAX_REFERENCE_VERSION = 1_000_000


def _check_reference_set(c: _Checker, entry, n_out: int) -> None:
    """``reference_set``: {name, version, n, n_outputs, n_skipped, sha256, created}; absent or empty (older
    tags, tags that cannot have one) is fine. ``n`` x ``n_outputs`` sizes the ``reference.predictions`` tensor."""
    from .reference import MAX_REFERENCE_ROWS

    entry = c.mapping(entry, "reference_set", optional=True)
    if not entry:
        return
    c.tree(entry, "reference_set")
    c.text(entry.get("name"), "reference_set.name", 200)
    c.integer(entry.get("version"), "reference_set.version", 1, MAX_REFERENCE_VERSION)
    c.integer(entry.get("n"), "reference_set.n", 1, MAX_REFERENCE_ROWS)
    if c.integer(entry.get("n_outputs"), "reference_set.n_outputs", 1, MAX_OUTPUTS) != n_out:
        c.fail("reference_set.n_outputs", f"must equal the head's {n_out} outputs", entry["n_outputs"])
    c.integer(entry.get("n_skipped", 0), "reference_set.n_skipped", 0, MAX_REFERENCE_ROWS)
    sha = entry.get("sha256", "")
    if not isinstance(sha, str) or (sha and not _SHA_RE.match(sha)):
        c.fail("reference_set.sha256", "must be a lower-case hex digest", sha)
    if "created" in entry:
        c.number(entry["created"], "reference_set.created")
