"""Tag files from strangers: every malformed file is refused with a ``TagError`` before anything is built.

Valid tags (``_tag_builders``, ``conftest``) are written, then mutated: cut
short, bytes flipped, tensors of the wrong shape or dtype, sizes declared far
beyond the data, card fields of the wrong type or out of range. Each mutated
file must be refused with a ``TagError`` that has a message (no other
exception type, no traceback for the Predict or Library page), and refusing
must not allocate what the file declares. Files that survive a random
mutation must still build their head. The bundled tags keep loading.
"""

from __future__ import annotations

import copy
import json
import random
import resource
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file as real_save_file

from tagllm_core.exceptions import TagError
from tagllm_core.heads import HeadConfig, LabelScaler, build_head
from tagllm_core.paths import BUNDLED_TAGS_DIR
from tagllm_core.tags import SUFFIX, Tag, TagLibrary, load_tag_file, read_card, save_tag_file

from _tag_builders import synthetic_solubility_tag
from conftest import make_domain_tag, make_function_tag

MiB = 1 << 20


# --- valid tags and raw writing ---------------------------------------------------------------------


def _descriptor_tag(backbone) -> Tag:
    """A regression tag whose standardising head reads layer 1 and 3 descriptor columns (the newest format)."""
    tag = synthetic_solubility_tag(backbone, "Desc")
    n_extra, in_dim = 3, 2 * backbone.hidden_size + 3
    tag.card.layers = [1]
    tag.card.features = "descriptors"
    tag.card.descriptor_names = ["rdkit:a", "rdkit:b", "rdkit:c"]
    tag.card.head = HeadConfig("regression", 1, in_dim, n_extra, standardize=True).to_dict()
    tag.head_state = {"weight": torch.zeros(1, in_dim), "bias": torch.zeros(1),
                      "x_mean": torch.zeros(in_dim), "x_std": torch.ones(in_dim)}
    return tag


def _valid_tags(backbone) -> dict:
    return {
        "solubility": synthetic_solubility_tag(backbone, "Sol"),
        "descriptors": _descriptor_tag(backbone),
        "classifier": make_function_tag(backbone, "Cls", task="classification", n_outputs=3,
                                        classes=["a", "b", "c"]),
        "two-inputs": make_function_tag(backbone, "Aff", slots=(("sequence", "protein", "Protein"),
                                                                ("smiles", "smiles", "SMILES"))),
        "domain": make_domain_tag(backbone, "SMILES"),
    }


def _parts(tag: Tag) -> tuple[dict, dict]:
    """(tensors, card dict) as ``save_tag_file`` would write them."""
    tensors = {"vectors": tag.vectors.float().contiguous()}
    tensors.update({f"head.{k}": v.float().contiguous() for k, v in tag.head_state.items()})
    tensors.update({f"domain.{k}": v.float().contiguous() for k, v in tag.domain_vectors.items()})
    return tensors, json.loads(tag.card.to_json())


def _write(path: Path, tensors: dict, card) -> Path:
    text = card if isinstance(card, str) else json.dumps(card)
    real_save_file(tensors, str(path), metadata={"format": "tagllm-tag", "card": text})
    return path


def _refused(path: Path) -> TagError:
    """load_tag_file(path) must raise TagError with a message; anything else fails the test."""
    try:
        load_tag_file(path)
    except TagError as err:
        assert str(err).strip(), "empty message"
        return err
    except Exception as err:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{type(err).__name__} instead of TagError: {err}")
    pytest.fail("the malformed tag file was accepted")


def _loads_and_builds(path: Path) -> None:
    """A file that is not refused must give a tag whose head builds (what Predictor does)."""
    try:
        tag = load_tag_file(path)
    except TagError as err:
        assert str(err).strip()
        return
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"{type(err).__name__} instead of TagError: {err}")
    if tag.card.head is not None:
        build_head(HeadConfig(**tag.card.head), tag.head_state)
    if tag.card.label_scaling:
        LabelScaler(**tag.card.label_scaling)


@pytest.fixture
def valid(llama, tmp_path) -> dict:
    """name -> (tensors, card dict) of valid tags for the tiny Llama (hidden 64)."""
    out = {}
    for name, tag in _valid_tags(llama).items():
        path = tmp_path / f"{name}{SUFFIX}"
        save_tag_file(tag, path)
        load_tag_file(path)  # the unmutated file is fine
        out[name] = _parts(tag)
    return out


# --- card fields: each bad value is refused and named ---------------------------------------------------

HUGE = 10**9

# (tag, dotted field path, bad value, a word the message must contain)
CARD_CASES = [
    ("solubility", "head.n_outputs", HUGE, "n_outputs"),
    ("solubility", "head.in_dim", HUGE, "in_dim"),
    ("solubility", "head.in_dim", 3, "in_dim"),
    ("solubility", "head.n_outputs", 0, "n_outputs"),
    ("solubility", "head.n_outputs", "1", "n_outputs"),
    ("solubility", "head.n_outputs", 1.5, "n_outputs"),
    ("solubility", "head.n_outputs", True, "n_outputs"),
    ("solubility", "head.task", "ranking", "task"),
    ("solubility", "head.task", "classification", "task"),
    ("solubility", "head.standardize", "yes", "standardize"),
    ("solubility", "head.n_extra", -1, "n_extra"),
    ("solubility", "head.n_extra", HUGE, "n_extra"),
    ("solubility", "head.surprise", 1, "surprise"),
    ("solubility", "head", [1, 2], "head"),
    ("solubility", "head", "linear", "head"),
    ("solubility", "head", None, "head"),
    ("solubility", "head", {"task": "regression"}, "head"),
    ("solubility", "label_scaling", {"mean": [0.0]}, "label_scaling"),
    ("solubility", "label_scaling", {"mean": [0.0, 1.0], "std": [1.0, 1.0]}, "label_scaling"),
    ("solubility", "label_scaling", {"mean": [0.0], "std": [0.0]}, "label_scaling"),
    ("solubility", "label_scaling", {"mean": ["a"], "std": [1.0]}, "label_scaling"),
    ("solubility", "label_scaling", {"mean": [0.0], "std": [1.0], "extra": 1}, "label_scaling"),
    ("solubility", "label_scaling", [0.0, 1.0], "label_scaling"),
    ("solubility", "label_scaling.mean", "0", "label_scaling"),
    ("solubility", "interval", {"level": 0.9}, "interval"),
    ("solubility", "interval", {"level": 5, "halfwidth": [1.0]}, "interval"),
    ("solubility", "interval", {"level": 0.9, "halfwidth": ["wide"]}, "interval"),
    ("solubility", "interval", {"level": 0.9, "halfwidth": []}, "interval"),
    ("solubility", "interval", "90%", "interval"),
    ("solubility", "layers", [0], "layers"),
    ("solubility", "layers", [HUGE], "layers"),
    ("solubility", "layers", ["1"], "layers"),
    ("solubility", "layers", [], "layers"),
    ("solubility", "layers", [1, 1], "layers"),
    ("solubility", "layers", 1, "layers"),
    ("solubility", "readout", "max", "readout"),
    ("solubility", "readout", None, "readout"),
    ("solubility", "features", "fingerprints", "features"),
    ("solubility", "features", "descriptors", "features"),
    ("solubility", "descriptor_names", "rdkit:a", "descriptor_names"),
    ("solubility", "labels", "y", "labels"),
    ("solubility", "labels", [1], "labels"),
    ("solubility", "task", None, "task"),
    ("solubility", "task", "ranking", "task"),
    ("solubility", "template", None, "template"),
    ("solubility", "template", 5, "template"),
    ("solubility", "template", "no tags at all", "template"),
    ("solubility", "template", "Input: {smiles}. Output: <Other>", "template"),
    ("solubility", "template", "Input: {drug}. Output: <Sol>", "template"),
    ("solubility", "slots", "smiles", "slots"),
    ("solubility", "slots", [{"name": "smiles"}], "slots"),
    ("solubility", "slots", [{"name": "smiles", "kind": "dna", "domain_tag": None}], "slots"),
    ("solubility", "slots", [{"name": "smiles", "kind": "smiles", "domain_tag": "../x"}], "slots"),
    ("solubility", "slots", [], "slots"),
    ("solubility", "metrics", [1, 2], "metrics"),
    ("solubility", "metrics", {"valid": [1, 2]}, "metrics"),
    ("solubility", "metrics", {"baselines": {"rf": 3}}, "metrics"),
    ("solubility", "metrics", {"baselines": {"mean": {"rmse": 1.0, "versus_tag": "better"}}}, "versus_tag"),
    ("solubility", "metrics", {"baselines": {"mean": {"versus_tag": {
        "metric": "rmse", "difference": "0.1", "low": 0.0, "high": 1.0, "level": 0.95, "larger_is_better": False,
        "n_boot": 10}}}}, "versus_tag.difference"),
    ("solubility", "metrics", {"baselines": {"mean": {"versus_tag": {
        "difference": 0.1, "low": 0.0, "high": 1.0, "level": 0.95}}}}, "versus_tag"),
    ("solubility", "label_sample", "1,2,3", "label_sample"),
    ("solubility", "label_sample", ["a"], "label_sample"),
    ("solubility", "training", "yesterday", "training"),
    ("solubility", "description", 5, "description"),
    ("solubility", "created", "now", "created"),
    ("solubility", "kind", "both", "kind"),
    ("solubility", "name", "../../etc/passwd", "name"),
    ("solubility", "name", 5, "name"),
    ("solubility", "n_tokens", HUGE, "n_tokens"),
    ("solubility", "n_tokens", "10", "n_tokens"),
    ("solubility", "n_tokens", 0, "n_tokens"),
    ("solubility", "backbone", "SmolLM2", "backbone"),
    ("solubility", "backbone.hidden_size", HUGE, "hidden_size"),
    ("solubility", "backbone.hidden_size", "64", "hidden_size"),
    ("solubility", "backbone.vocab_size", -5, "vocab_size"),
    ("solubility", "backbone.embedding_sha256", 12, "embedding_sha256"),
    ("solubility", "backbone.name", ["a"], "name"),
    ("solubility", "format_version", "one", "version"),
    ("descriptors", "head.n_extra", 2, "n_extra"),
    ("descriptors", "descriptor_names", ["rdkit:a"], "descriptor_names"),
    ("descriptors", "descriptor_names", [1, 2, 3], "descriptor_names"),
    ("descriptors", "features", "none", "features"),
    ("classifier", "classes", ["a", "b"], "classes"),
    ("classifier", "classes", "abc", "classes"),
    ("classifier", "classes", [["a"], "b", "c"], "classes"),
    ("classifier", "label_scaling", {"mean": [0.0], "std": [1.0]}, "label_scaling"),
    ("classifier", "head.n_outputs", 1, "n_outputs"),
    ("classifier", "task", "regression", "task"),
    ("two-inputs", "slots", [{"name": "sequence", "kind": "protein", "domain_tag": "Protein"}], "slots"),
    ("domain", "input_kind", "dna", "input_kind"),
    ("domain", "head", {"task": "regression", "n_outputs": 1, "in_dim": 64}, "head"),
]


def _set(card: dict, dotted: str, value) -> dict:
    card = json.loads(json.dumps(card))
    *parents, last = dotted.split(".")
    node = card
    for key in parents:
        node = node[key]
    node[last] = value
    return card


@pytest.mark.parametrize("tag, field, value, word", CARD_CASES,
                         ids=[f"{t}:{f}={str(v)[:20]}" for t, f, v, _ in CARD_CASES])
def test_bad_card_field_is_refused_naming_the_field(valid, tmp_path, tag, field, value, word):
    tensors, card = valid[tag]
    path = _write(tmp_path / f"bad{SUFFIX}", tensors, _set(card, field, value))
    err = _refused(path)
    assert word in str(err), str(err)
    with pytest.raises(TagError):  # the library listing reads only the card: it refuses too
        read_card(path)


def test_malformed_head_that_used_to_raise_type_error_is_a_tag_error(valid, tmp_path):
    tensors, card = valid["solubility"]
    card["head"]["dropout"] = 0.1  # HeadConfig(**card.head) raised TypeError on the Predict page
    _refused(_write(tmp_path / f"bad{SUFFIX}", tensors, card))


def test_card_too_large_or_too_deep_is_refused(valid, tmp_path):
    tensors, card = valid["solubility"]
    err = _refused(_write(tmp_path / f"big{SUFFIX}", tensors, _set(card, "description", "x" * (5 * MiB))))
    assert "card is" in str(err)  # over the card cap
    err = _refused(_write(tmp_path / f"big{SUFFIX}", tensors, _set(card, "description", "x" * (9 * MiB))))
    assert "header" in str(err)  # over the header cap: refused before safetensors parses it
    deep = "[" * 100_000 + "]" * 100_000
    text = json.dumps(_set(card, "training", {"x": 1})).replace('"training": {', f'"training": {{"deep": {deep}, ', 1)
    _refused(_write(tmp_path / f"deep{SUFFIX}", tensors, text))
    _refused(_write(tmp_path / f"int{SUFFIX}", tensors, json.dumps(card).replace('"n_tokens": 10',
                                                                                 '"n_tokens": 1' + "0" * 5000, 1)))


# --- tensors: shapes, dtypes, names, values -------------------------------------------------------------


def _tensor_cases(valid: dict) -> list:
    sol_t, sol_c = valid["solubility"]
    desc_t, desc_c = valid["descriptors"]
    aff_t, aff_c = valid["two-inputs"]
    dom_t, dom_c = valid["domain"]
    d = sol_t["vectors"].shape[1]

    def swap(tensors, **changes):
        out = dict(tensors)
        for k, v in changes.items():
            key = k.replace("__", ".")
            if v is None:
                out.pop(key)
            else:
                out[key] = v
        return out

    return [
        ("vectors transposed", swap(sol_t, vectors=sol_t["vectors"].T.contiguous()), sol_c, "vectors"),
        ("vectors 3-d", swap(sol_t, vectors=sol_t["vectors"][None]), sol_c, "vectors"),
        ("vectors int32", swap(sol_t, vectors=sol_t["vectors"].int()), sol_c, "vectors"),
        ("vectors float16", swap(sol_t, vectors=sol_t["vectors"].half()), sol_c, "vectors"),
        ("vectors float64", swap(sol_t, vectors=sol_t["vectors"].double()), sol_c, "vectors"),
        ("vectors bool", swap(sol_t, vectors=sol_t["vectors"] > 0), sol_c, "vectors"),
        ("no vectors", swap(sol_t, vectors=None), sol_c, "vectors"),
        ("head weight wider", swap(sol_t, head__weight=torch.zeros(1, 2 * d + 1)), sol_c, "head.weight"),
        ("head weight 1-d", swap(sol_t, head__weight=torch.zeros(2 * d)), sol_c, "head.weight"),
        ("head weight empty", swap(sol_t, head__weight=torch.zeros(0, 2 * d)), sol_c, "head.weight"),
        ("head weight int64", swap(sol_t, head__weight=torch.zeros(1, 2 * d, dtype=torch.int64)), sol_c,
         "head.weight"),
        ("head weight NaN", swap(sol_t, head__weight=torch.full((1, 2 * d), float("nan"))), sol_c, "head.weight"),
        ("head bias (2,)", swap(sol_t, head__bias=torch.zeros(2)), sol_c, "head.bias"),
        ("head bias scalar", swap(sol_t, head__bias=torch.tensor(0.0)), sol_c, "head.bias"),
        ("head bias missing", swap(sol_t, head__bias=None), sol_c, "head.bias"),
        ("head bias inf", swap(sol_t, head__bias=torch.tensor([float("inf")])), sol_c, "head.bias"),
        ("unknown head tensor", swap(sol_t, head__gate=torch.zeros(1)), sol_c, "head.gate"),
        ("unknown tensor", swap(sol_t, payload=torch.zeros(4)), sol_c, "payload"),
        ("x_mean missing", swap(desc_t, head__x_mean=None), desc_c, "x_mean"),
        ("x_std short", swap(desc_t, head__x_std=torch.ones(5)), desc_c, "x_std"),
        ("x_std zero", swap(desc_t, head__x_std=torch.zeros(desc_t["head.x_std"].shape)), desc_c, "x_std"),
        ("statistics on a plain head", swap(sol_t, head__x_mean=torch.zeros(2 * d)), sol_c, "x_mean"),
        ("head no longer standardises", desc_t, _set(desc_c, "head.standardize", False), "x_mean"),
        ("domain tag wrong width", swap(aff_t, domain__SMILES=torch.zeros(2, d + 1)), aff_c, "domain.SMILES"),
        ("domain tag 1-d", swap(aff_t, domain__SMILES=torch.zeros(d)), aff_c, "domain.SMILES"),
        ("domain tag no rows", swap(aff_t, domain__SMILES=torch.zeros(0, d)), aff_c, "domain.SMILES"),
        ("domain tag too many rows", swap(aff_t, domain__SMILES=torch.zeros(300, d)), aff_c, "domain.SMILES"),
        ("domain tag int8", swap(aff_t, domain__SMILES=torch.zeros(2, d, dtype=torch.int8)), aff_c,
         "domain.SMILES"),
        ("domain tag NaN", swap(aff_t, domain__SMILES=torch.full((2, d), float("nan"))), aff_c, "domain.SMILES"),
        ("domain tag bad name", swap(aff_t, **{"domain__..": torch.zeros(2, d)}), aff_c, "domain"),
        ("domain tag missing", swap(aff_t, domain__Protein=None), aff_c, "Protein"),
        ("head on a domain tag", swap(dom_t, head__weight=torch.zeros(1, d), head__bias=torch.zeros(1)), dom_c,
         "head"),
    ]


def test_bad_tensors_are_refused_naming_the_tensor(valid, tmp_path):
    for i, (what, tensors, card, word) in enumerate(_tensor_cases(valid)):
        path = _write(tmp_path / f"t{i}{SUFFIX}", tensors, card)
        err = _refused(path)
        assert word in str(err), f"{what}: {err}"


def _set_header(path: Path, edit) -> None:
    """Rewrite the safetensors JSON header of ``path`` with ``edit(header)`` (same data bytes)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


@pytest.mark.parametrize("edit", [
    lambda h: h["head.weight"].update(shape=[HUGE, HUGE]),
    lambda h: h["vectors"].update(shape=[HUGE, 64]),
    lambda h: h["head.weight"].update(data_offsets=[0, HUGE]),
    lambda h: h["head.weight"].update(dtype="F64"),
    lambda h: h["vectors"].update(dtype="I32"),
    lambda h: h["vectors"].update(shape=[-1, 64]),
], ids=["weight-huge", "vectors-huge", "offsets-huge", "dtype-f64", "dtype-i32", "negative-shape"])
def test_declared_sizes_beyond_the_data_are_refused(valid, tmp_path, edit):
    tensors, card = valid["solubility"]
    path = _write(tmp_path / f"h{SUFFIX}", tensors, card)
    _set_header(path, edit)
    _refused(path)


def test_huge_declared_header_length_is_refused_without_reading_it(valid, tmp_path):
    tensors, card = valid["solubility"]
    path = _write(tmp_path / f"h{SUFFIX}", tensors, card)
    data = path.read_bytes()
    for length in (2**40, 2**63 - 1, 200 * MiB):
        path.write_bytes(struct.pack("<Q", length) + data[8:])
        _refused(path)


# --- random mutations, and memory ---------------------------------------------------------------------------


WEIRD = [None, True, False, -1, 0, 3, HUGE, 2**70, 1.5, float("inf"), float("nan"), "", "x", "1e999",
         [], [None], ["a", 1], {}, {"a": {}}, {"mean": [1.0], "std": [0.0]}]


def _paths(node, prefix=()):
    """Every (path, value) inside a JSON value, the root excepted."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,), value
        yield from _paths(value, prefix + (key,))


def _card_mutation(card: dict, rng: random.Random) -> str:
    """The card's JSON with one to three values (anywhere in it) replaced by values of the wrong type or size,
    or its text with characters flipped; the file around it stays valid safetensors."""
    card = json.loads(json.dumps(card))
    if rng.random() < 0.25:
        text = bytearray(json.dumps(card).encode())
        for _ in range(rng.randint(1, 4)):
            text[rng.randrange(len(text))] = rng.choice(b'0123456789{}[]",:-.eE xn')
        return text.decode("utf-8", "replace")
    for _ in range(rng.randint(1, 3)):
        paths = [p for p, _ in _paths(card) if p[0] not in ("label_sample", "descriptor_names")] or [("name",)]
        *parents, last = rng.choice(paths)
        node = card
        for key in parents:
            node = node[key]
        node[last] = copy.deepcopy(rng.choice(WEIRD))
    return json.dumps(card)  # NaN and inf as the JSON extensions Python reads back


def _mutations(files: list[bytes], seed: int, n: int):
    rng = random.Random(seed)
    for _ in range(n):
        data = bytearray(rng.choice(files))
        kind = rng.choice(("cut", "flip", "flip-header", "splice"))
        if kind == "cut":
            yield kind, bytes(data[:rng.randrange(len(data))])
            continue
        header_end = 8 + struct.unpack("<Q", bytes(data[:8]))[0]
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(header_end) if kind != "flip" else rng.randrange(len(data))
            if kind == "splice":  # digits are where sizes live: make a number longer
                at = rng.randrange(8, header_end)
                data[at:at] = str(rng.randrange(10)).encode()
            else:
                data[at] ^= 1 << rng.randrange(8)
        yield kind, bytes(data)


def test_random_mutations_are_refused_or_load_cleanly_without_a_memory_spike(valid, tmp_path):
    files = []
    for i, (tensors, card) in enumerate(valid.values()):
        files.append(_write(tmp_path / f"v{i}{SUFFIX}", tensors, card).read_bytes())
    path = tmp_path / f"m{SUFFIX}"
    rng = random.Random(12)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        for kind, data in _mutations(files, seed=11, n=400):
            path.write_bytes(data)
            _loads_and_builds(path)
        for _ in range(600):  # past the safetensors layer: the card itself
            tensors, card = rng.choice(list(valid.values()))
            _loads_and_builds(_write(path, tensors, _card_mutation(card, rng)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert peak < 64 * MiB, f"Python allocations peaked at {peak / MiB:.0f} MiB"
    assert rss_growth < 256 * 1024, f"resident memory grew by {rss_growth / 1024:.0f} MiB"


def test_refusing_a_huge_head_allocates_nothing_big(valid, tmp_path):
    tensors, card = valid["solubility"]
    path = _write(tmp_path / f"h{SUFFIX}", tensors, _set(_set(card, "head.n_outputs", HUGE), "head.in_dim", HUGE))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _refused(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 * 1024


# --- what must keep loading ---------------------------------------------------------------------------


def test_valid_tags_of_every_shape_load_and_build(valid, tmp_path):
    for name, (tensors, card) in valid.items():
        tag = load_tag_file(_write(tmp_path / f"{name}{SUFFIX}", tensors, card))
        if tag.card.head is not None:
            build_head(HeadConfig(**tag.card.head), tag.head_state)


BUNDLED = sorted(BUNDLED_TAGS_DIR.glob(f"*/*{SUFFIX}"))


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_tags_still_load(path):
    tag = load_tag_file(path)
    assert read_card(path) == tag.card
    if tag.kind == "function":
        head = build_head(HeadConfig(**tag.card.head), tag.head_state)
        assert head.linear.weight.shape == tag.head_state["weight"].shape


def test_bundled_tags_are_all_listed():
    assert len(BUNDLED) >= 4
    slug = BUNDLED[0].parent.name
    fp = read_card(BUNDLED[0]).fingerprint
    assert fp.slug == slug
    lib = TagLibrary(fp, user_dir=Path("/nonexistent-tagllm-user"))
    assert lib.problems() == []
    assert {t.name for t in lib.list()} >= {"SMILES", "Protein", "Solubility", "BindingAffinity"}


def test_old_format_card_without_newer_fields_loads(valid, tmp_path):
    """Cards written before layers/features/n_extra/standardize existed (as the first bundled tags were)."""
    tensors, card = valid["solubility"]
    for key in ("layers", "features", "descriptor_names", "interval", "label_sample", "training", "metrics",
                "classes", "input_kind"):
        card.pop(key, None)
    card["head"] = {k: card["head"][k] for k in ("task", "n_outputs", "in_dim")}
    tag = load_tag_file(_write(tmp_path / f"old{SUFFIX}", tensors, card))
    build_head(HeadConfig(**tag.card.head), tag.head_state)
