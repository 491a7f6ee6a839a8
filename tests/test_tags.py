"""Tag files and libraries: round trips, atomic writes, names, fingerprints, corruption."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file as real_save_file

from tagllm_core import tags as tags_mod
from tagllm_core.exceptions import (
    BackboneMismatchError,
    TagFormatError,
    TagLLMError,
    TagNameError,
    TagNotFoundError,
)
from tagllm_core.tags import (
    FORMAT_VERSION,
    MAX_NAME_LENGTH,
    SUFFIX,
    SlotSpec,
    Tag,
    TagCard,
    TagLibrary,
    init_tag_vectors,
    load_tag_file,
    normalize_tag_name,
    read_card,
    save_tag_file,
)

from conftest import make_domain_tag, make_function_tag  # noqa: E402


def _assert_same_tag(a: Tag, b: Tag):
    assert a.card == b.card
    assert torch.equal(a.vectors, b.vectors)
    assert set(a.head_state) == set(b.head_state)
    for k in a.head_state:
        assert torch.equal(a.head_state[k], b.head_state[k])
    assert set(a.domain_vectors) == set(b.domain_vectors)
    for k in a.domain_vectors:
        assert torch.equal(a.domain_vectors[k], b.domain_vectors[k])


def _leftovers(folder: Path) -> list:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [("QED", "QED"), ("<QED>", "QED"), (" <QED> ", "QED"), ("< QED >", "QED"), ("Sol_2.v1+x-y", "Sol_2.v1+x-y"),
     ("a" * MAX_NAME_LENGTH, "a" * MAX_NAME_LENGTH), ("9lives", "9lives")],
)
def test_valid_names(name, expected):
    assert normalize_tag_name(name) == expected


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "a\\b", "..", "x..y", "", "   ", "<>", "a" * (MAX_NAME_LENGTH + 1), "has space", "a\x00b",
     ".hidden", "-dash", "é", "<a/b>", "C:x"],
)
def test_invalid_names(name):
    with pytest.raises(TagNameError):
        normalize_tag_name(name)


def test_non_string_name():
    with pytest.raises(TagNameError, match="text"):
        normalize_tag_name(3)


def test_65_char_name_message():
    with pytest.raises(TagNameError, match="longer than 64"):
        normalize_tag_name("b" * 65)


# --- init ----------------------------------------------------------------------------------


def test_init_tag_vectors_statistics(llama):
    emb = llama.embedding_matrix
    gen = torch.Generator().manual_seed(0)
    v = init_tag_vectors(emb, 7, generator=gen)
    assert v.shape == (7, llama.hidden_size) and v.dtype == torch.float32
    avg = emb.float().norm(dim=1).mean()
    assert torch.allclose(v.norm(dim=1), avg.expand(7), rtol=0.1)
    assert not torch.equal(v[0], v[1])  # the noise differs per vector
    again = init_tag_vectors(emb, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(v, again)
    ids = torch.tensor([5, 9])
    w = init_tag_vectors(emb, 5, noise=0.0, from_ids=ids)
    torch.testing.assert_close(w, emb[[5, 9, 5, 9, 5]].float())


# --- file round trip ---------------------------------------------------------------------------


def test_function_tag_round_trip(backbone, tmp_path):
    tag = make_function_tag(backbone, "Solubility", slots=(("sequence", "protein", "Protein"),
                                                           ("smiles", "smiles", "SMILES")),
                            interval={"level": 0.9, "halfwidth": [0.25]})
    path = tmp_path / f"Solubility{SUFFIX}"
    save_tag_file(tag, path)
    loaded = load_tag_file(path)
    _assert_same_tag(tag, loaded)
    assert set(loaded.domain_vectors) == {"Protein", "SMILES"}
    assert loaded.card.slots == [SlotSpec("sequence", "protein", "Protein"), SlotSpec("smiles", "smiles", "SMILES")]
    assert loaded.card.interval == {"level": 0.9, "halfwidth": [0.25]}
    assert loaded.card.fingerprint == backbone.fingerprint
    assert loaded.card.format_version == FORMAT_VERSION
    assert loaded.kind == "function" and loaded.name == "Solubility"
    # the card alone can be read without the tensors
    assert read_card(path) == tag.card


def test_domain_tag_round_trip(backbone, tmp_path):
    tag = make_domain_tag(backbone, "Protein", "protein", n_tokens=4)
    path = tmp_path / f"Protein{SUFFIX}"
    save_tag_file(tag, path)
    loaded = load_tag_file(path)
    _assert_same_tag(tag, loaded)
    assert loaded.head_state == {} and loaded.domain_vectors == {}
    assert loaded.card.input_kind == "protein"


def test_saved_file_is_plain_safetensors_with_a_json_card(llama, tmp_path):
    from safetensors import safe_open

    path = tmp_path / f"F{SUFFIX}"
    save_tag_file(make_function_tag(llama, "F"), path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert keys == {"vectors", "head.weight", "head.bias", "domain.SMILES"}
    assert meta["format"] == "tagllm-tag"
    card = json.loads(meta["card"])
    assert card["name"] == "F" and card["backbone"]["name"] == "tiny-llama"


def test_card_from_json_rejects_newer_format():
    card = TagCard(name="x", kind="domain", backbone={}, n_tokens=1)
    data = json.loads(card.to_json())
    data["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(TagFormatError, match="version"):
        TagCard.from_json(json.dumps(data))
    del data["format_version"]
    with pytest.raises(TagFormatError):
        TagCard.from_json(json.dumps(data))
    with pytest.raises(TagFormatError, match="JSON object"):
        TagCard.from_json("[1, 2]")


def test_card_ignores_unknown_fields_and_reports_missing_ones():
    card = TagCard(name="x", kind="domain", backbone={}, n_tokens=1)
    data = json.loads(card.to_json())
    data["from_the_future"] = 1
    assert TagCard.from_json(json.dumps(data)) == card
    del data["n_tokens"]
    with pytest.raises(TagFormatError, match="incomplete"):
        TagCard.from_json(json.dumps(data))


def test_nan_metric_does_not_crash_saving(llama, tmp_path):
    tag = make_function_tag(llama, "F")
    tag.card.metrics = {"valid_spearman": float("nan"), "valid_rmse": 0.5}
    path = tmp_path / f"F{SUFFIX}"
    try:
        save_tag_file(tag, path)
    except TagLLMError:
        return  # a message for the user is acceptable too
    card = read_card(path)
    assert card.metrics["valid_rmse"] == 0.5
    assert card.metrics["valid_spearman"] is None


# --- atomic writes --------------------------------------------------------------------------------


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(llama, tmp_path, monkeypatch):
    path = tmp_path / f"F{SUFFIX}"
    old = make_function_tag(llama, "F", seed=1)
    save_tag_file(old, path)
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:  # leave a half-written file behind, then fail
            fh.truncate(os.path.getsize(filename) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(tags_mod, "save_file", broken_save)
    new = make_function_tag(llama, "F", seed=2)
    with pytest.raises(OSError, match="disk full"):
        save_tag_file(new, path)
    assert path.read_bytes() == before
    _assert_same_tag(old, load_tag_file(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_interrupted_write_of_a_new_file_leaves_nothing(llama, tmp_path, monkeypatch):
    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(tags_mod, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_tag_file(make_function_tag(llama, "F"), tmp_path / "sub" / f"F{SUFFIX}")
    assert list((tmp_path / "sub").iterdir()) == []


def test_library_save_failure_keeps_old_tag(llama, library_factory, monkeypatch):
    lib = library_factory(llama)
    old = make_function_tag(llama, "F", seed=1)
    lib.save(old)

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)
        raise OSError("boom")

    monkeypatch.setattr(tags_mod, "save_file", broken_save)
    with pytest.raises(OSError):
        lib.save(make_function_tag(llama, "F", seed=2), overwrite=True)
    _assert_same_tag(old, lib.get("F"))
    assert _leftovers(lib.user_dir) == []


# --- corrupted and foreign files -------------------------------------------------------------------


@pytest.fixture
def saved_tag(llama, tmp_path):
    path = tmp_path / f"F{SUFFIX}"
    save_tag_file(make_function_tag(llama, "F"), path)
    return path


@pytest.mark.parametrize(
    "cut",
    [lambda n: n - 10, lambda n: n // 2, lambda n: 100, lambda n: 8, lambda n: 3],
    ids=["last-bytes", "half", "100-bytes", "8-bytes", "3-bytes"],
)
def test_truncated_file_is_a_format_error(saved_tag, cut):
    data = saved_tag.read_bytes()
    saved_tag.write_bytes(data[: cut(len(data))])
    with pytest.raises(TagFormatError, match=saved_tag.name):
        load_tag_file(saved_tag)
    with pytest.raises(TagFormatError):
        read_card(saved_tag)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_a_format_error(tmp_path, seed):
    gen = torch.Generator().manual_seed(seed)
    data = bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist())
    path = tmp_path / f"R{SUFFIX}"
    path.write_bytes(data)
    with pytest.raises(TagFormatError):
        load_tag_file(path)


def test_empty_file_is_a_format_error(tmp_path):
    path = tmp_path / f"E{SUFFIX}"
    path.write_bytes(b"")
    with pytest.raises(TagFormatError):
        load_tag_file(path)


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickle_file_is_refused(llama, tmp_path, zipfile):
    path = tmp_path / f"P{SUFFIX}"
    tag = make_function_tag(llama, "P")
    torch.save({"vectors": tag.vectors, "card": tag.card.to_json()}, path,
               _use_new_zipfile_serialization=zipfile)
    with pytest.raises(TagFormatError, match="pickle"):
        load_tag_file(path)
    with pytest.raises(TagFormatError, match="pickle"):
        read_card(path)


def test_safetensors_without_a_card(tmp_path):
    path = tmp_path / f"N{SUFFIX}"
    real_save_file({"vectors": torch.zeros(2, 4)}, str(path))
    with pytest.raises(TagFormatError, match="not a Tag-LLM tag"):
        load_tag_file(path)


def test_corrupted_card_json(llama, tmp_path):
    path = tmp_path / f"C{SUFFIX}"
    real_save_file({"vectors": torch.zeros(2, 4)}, str(path), metadata={"format": "tagllm-tag", "card": "{not json"})
    with pytest.raises(TagFormatError, match="corrupted card"):
        load_tag_file(path)


def test_vector_shape_must_match_the_card(llama, tmp_path):
    tag = make_function_tag(llama, "F", n_tokens=3)
    tag.vectors = tag.vectors[:2]
    path = tmp_path / f"F{SUFFIX}"
    save_tag_file(tag, path)
    with pytest.raises(TagFormatError, match="shape"):
        load_tag_file(path)


def test_non_finite_vectors_are_refused(llama, tmp_path):
    tag = make_function_tag(llama, "F")
    tag.vectors[1, 3] = float("nan")
    path = tmp_path / f"F{SUFFIX}"
    # written past save_tag_file (which refuses NaN itself): a file made elsewhere
    tensors = {"vectors": tag.vectors, **{f"head.{k}": v for k, v in tag.head_state.items()},
               **{f"domain.{k}": v for k, v in tag.domain_vectors.items()}}
    real_save_file(tensors, str(path), metadata={"format": "tagllm-tag", "card": tag.card.to_json()})
    with pytest.raises(TagFormatError, match="NaN"):
        load_tag_file(path)


def test_function_tag_without_head_is_refused(llama, tmp_path):
    tag = make_function_tag(llama, "F")
    tag.head_state = {}
    path = tmp_path / f"F{SUFFIX}"
    save_tag_file(tag, path)
    with pytest.raises(TagFormatError, match="head"):
        load_tag_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(TagNotFoundError):
        load_tag_file(tmp_path / f"nope{SUFFIX}")


# --- libraries ------------------------------------------------------------------------------------


def test_library_default_folder_is_under_tagllm_home(llama, tagllm_home):
    lib = TagLibrary(llama.fingerprint)
    assert lib.user_dir == tagllm_home / "tags" / llama.fingerprint.slug
    path = lib.save(make_domain_tag(llama, "SMILES"))
    assert path.parent == lib.user_dir and path.is_file()
    assert str(path).startswith(str(tagllm_home))


def test_library_list_find_get_delete(backbone, library_factory):
    lib = library_factory(backbone)
    assert lib.list() == []
    func = make_function_tag(backbone, "Solubility")
    dom = make_domain_tag(backbone, "SMILES")
    p1, p2 = lib.save(func), lib.save(dom)
    assert p1.name == f"Solubility{SUFFIX}" and p2.name == f"SMILES{SUFFIX}"
    assert [t.name for t in lib.list()] == ["SMILES", "Solubility"]
    assert [t.name for t in lib.list("function")] == ["Solubility"]
    assert [t.name for t in lib.list("domain")] == ["SMILES"]
    info = lib.find("<Solubility>")
    assert info.source == "user" and info.path == p1 and info.size_bytes == p1.stat().st_size
    assert info.card == func.card
    _assert_same_tag(func, lib.get("Solubility"))
    assert lib.exists("SMILES") and not lib.exists("Nope")
    with pytest.raises(TagNotFoundError) as err:
        lib.find("Nope")
    assert "<SMILES>" in str(err.value) and "<Solubility>" in str(err.value)
    lib.delete("<SMILES>")
    assert not p2.exists()
    assert [t.name for t in lib.list()] == ["Solubility"]
    with pytest.raises(TagNotFoundError):
        lib.delete("SMILES")
    with pytest.raises(TagNameError):
        lib.find("../Solubility")


def test_library_skips_and_reports_unreadable_files(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_domain_tag(llama, "SMILES"))
    (lib.user_dir / f"Broken{SUFFIX}").write_bytes(b"garbage" * 10)
    assert [t.name for t in lib.list()] == ["SMILES"]
    problems = lib.problems()
    assert len(problems) == 1 and f"Broken{SUFFIX}" in problems[0]


def test_duplicate_name_needs_overwrite(llama, library_factory):
    lib = library_factory(llama)
    first = make_function_tag(llama, "F", seed=1)
    second = make_function_tag(llama, "F", seed=2)
    lib.save(first)
    with pytest.raises(TagNameError, match="already exists"):
        lib.save(second)
    _assert_same_tag(first, lib.get("F"))
    lib.save(second, overwrite=True)
    _assert_same_tag(second, lib.get("F"))
    assert _leftovers(lib.user_dir) == []


def test_bundled_tags_are_read_only(llama, library_factory):
    lib = library_factory(llama)
    bundled = make_domain_tag(llama, "SMILES", seed=5)
    save_tag_file(bundled, lib.bundled_dir / f"SMILES{SUFFIX}")
    info = lib.find("SMILES")
    assert info.source == "bundled"
    _assert_same_tag(bundled, lib.get("SMILES"))
    with pytest.raises(TagLLMError, match="bundled"):
        lib.delete("SMILES")
    assert (lib.bundled_dir / f"SMILES{SUFFIX}").exists()
    for overwrite in (False, True):
        with pytest.raises(TagNameError, match="bundled"):
            lib.save(make_domain_tag(llama, "SMILES", seed=6), overwrite=overwrite)
    assert not (lib.user_dir / f"SMILES{SUFFIX}").exists()
    lib.save(make_domain_tag(llama, "Mine"))
    assert [(t.name, t.source) for t in lib.list()] == [("SMILES", "bundled"), ("Mine", "user")]


def test_export_and_import(llama, library_factory, tmp_path):
    lib = library_factory(llama, user="a")
    tag = make_function_tag(llama, "F")
    lib.save(tag)
    out = tmp_path / "out"
    out.mkdir()
    dest = lib.export("F", out)  # into a folder
    assert dest == out / f"F{SUFFIX}"
    assert dest.read_bytes() == lib.find("F").path.read_bytes()
    dest2 = lib.export("F", tmp_path / "renamed.safetensors")  # to a file
    assert dest2.read_bytes() == dest.read_bytes()
    assert _leftovers(out) == []

    other = library_factory(llama, user="b")
    info = other.import_file(dest)
    assert info.source == "user" and info.name == "F" and info.path.parent == other.user_dir
    _assert_same_tag(tag, other.get("F"))
    with pytest.raises(TagNameError, match="already exists"):
        other.import_file(dest)
    info = other.import_file(dest2, overwrite=True)
    assert info.name == "F"


def test_import_refuses_corrupted_and_pickle_files(llama, library_factory, tmp_path):
    lib = library_factory(llama)
    bad = tmp_path / f"Bad{SUFFIX}"
    bad.write_bytes(b"\x01\x02" * 50)
    with pytest.raises(TagFormatError):
        lib.import_file(bad)
    pk = tmp_path / f"Pk{SUFFIX}"
    torch.save({"x": 1}, pk)
    with pytest.raises(TagFormatError, match="pickle"):
        lib.import_file(pk)
    assert lib.list() == []


# --- backbone fingerprints ----------------------------------------------------------------------------


def test_library_refuses_a_tag_from_another_backbone(llama, gpt2, library_factory):
    lib = library_factory(gpt2)
    tag = make_function_tag(llama, "F")
    with pytest.raises(BackboneMismatchError) as err:
        lib.save(tag)
    msg = str(err.value)
    assert "tiny-llama" in msg and "tiny-gpt2" in msg
    assert llama.fingerprint.embedding_sha256[:8] in msg and gpt2.fingerprint.embedding_sha256[:8] in msg
    assert lib.list() == []


def test_import_refuses_a_tag_from_another_backbone(llama, gpt2, library_factory, tmp_path):
    path = tmp_path / f"F{SUFFIX}"
    save_tag_file(make_function_tag(llama, "F"), path)
    lib = library_factory(gpt2)
    with pytest.raises(BackboneMismatchError, match="tiny-llama.*tiny-gpt2"):
        lib.import_file(path)
    assert lib.list() == []


def test_get_refuses_a_foreign_file_placed_in_the_library(llama, gpt2, library_factory):
    lib = library_factory(gpt2)
    lib.user_dir.mkdir(parents=True)
    save_tag_file(make_function_tag(llama, "F"), lib.user_dir / f"F{SUFFIX}")
    with pytest.raises(BackboneMismatchError) as err:
        lib.get("F")
    assert "tiny-llama" in str(err.value) and "tiny-gpt2" in str(err.value)


def test_same_weights_under_another_name_match(llama, library_factory):
    """The fingerprint compares weights, not names: a renamed copy of the backbone still fits."""
    from dataclasses import replace

    lib = TagLibrary(replace(llama.fingerprint, name="renamed"), user_dir=library_factory(llama).user_dir)
    lib.save(make_function_tag(llama, "F"))
    assert lib.get("F").name == "F"


def test_library_folders_are_per_backbone(llama, gpt2):
    a, b = TagLibrary(llama.fingerprint), TagLibrary(gpt2.fingerprint)
    assert a.user_dir != b.user_dir
    assert a.bundled_dir.name == llama.fingerprint.slug


# --- regressions for bugs found while writing these tests ----------------------------------


def _header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("target", [896, 1152, 1408])
def test_valid_tag_whose_header_length_looks_like_pickle_magic_loads(llama, tmp_path, target):
    from safetensors.torch import save as serialise

    tag = make_domain_tag(llama, "SMILES")
    path = tmp_path / f"SMILES{SUFFIX}"
    for k in range(2000):  # grow the description until the padded header has the target length
        tag.card.description = "d" * k
        data = serialise({"vectors": tag.vectors}, metadata={"format": "tagllm-tag", "card": tag.card.to_json()})
        if int.from_bytes(data[:8], "little") >= target:
            break
    save_tag_file(tag, path)
    assert _header_length(path) == target  # multiples of 8 are all reachable one character at a time
    assert path.read_bytes()[:2] in (b"\x80\x03", b"\x80\x04", b"\x80\x05")
    _assert_same_tag(tag, load_tag_file(path))


def _write_raw_card(path: Path, card: dict, vectors: torch.Tensor):
    real_save_file({"vectors": vectors}, str(path), metadata={"format": "tagllm-tag", "card": json.dumps(card)})


def test_non_numeric_format_version_is_a_format_error_and_list_skips_it(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_domain_tag(llama, "Good"))
    card = json.loads(make_domain_tag(llama, "Bad").card.to_json())
    card["format_version"] = "one"
    _write_raw_card(lib.user_dir / f"Bad{SUFFIX}", card, torch.zeros(2, llama.hidden_size))
    assert [t.name for t in lib.list()] == ["Good"]
    with pytest.raises(TagFormatError):
        read_card(lib.user_dir / f"Bad{SUFFIX}")


def test_card_with_incomplete_backbone_is_a_format_error(llama, tmp_path):
    card = json.loads(make_domain_tag(llama, "Bad").card.to_json())
    card["backbone"] = {}
    path = tmp_path / f"Bad{SUFFIX}"
    _write_raw_card(path, card, torch.zeros(2, llama.hidden_size))
    with pytest.raises(TagFormatError):
        load_tag_file(path)
