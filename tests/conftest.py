"""Shared fixtures: an isolated TAGLLM_HOME per test, tiny offline backbones, tag factories.

Tiny backbones are randomly initialised Hugging Face models (Llama, GPT-2,
Qwen2; hidden 64, 2 layers) wrapped through ``tagllm_core.backbone.wrap_model``
with a character-level tokenizer built in memory, so nothing is downloaded.

``TAGLLM_CACHE`` is deliberately left alone: the real-backbone tests reuse the
dequantised SmolLM2 cache (~540 MB, ~40 s to build) in the user's default
cache location (or wherever an already-set ``TAGLLM_CACHE`` points).
"""

from __future__ import annotations

import os
import string
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

# Never reach the network: set before transformers / huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tagllm_core.backbone import Backbone, wrap_model  # noqa: E402
from tagllm_core.model import readout_dim  # noqa: E402
from tagllm_core.tags import SlotSpec, Tag, TagCard, TagLibrary, init_tag_vectors  # noqa: E402

# One intra-op thread by default: tiny models gain nothing from threads, and on a busy
# 2-core machine OpenMP barriers turned each 64-wide matmul into a ~16 ms stall (and
# made the real 135M backbone 2-5x slower than with one thread). Override with
# TAGLLM_TEST_THREADS=N.
DEFAULT_TORCH_THREADS = torch.get_num_threads()
TEST_TORCH_THREADS = int(os.environ.get("TAGLLM_TEST_THREADS", "1"))
torch.set_num_threads(TEST_TORCH_THREADS)
# The test session is an entry point like the CLI: keep freed tensor memory (tagllm_core/_allocator.py).
from tagllm_core._allocator import tune as _tune_allocator  # noqa: E402

_tune_allocator()

ARCHS = ("llama", "gpt2", "qwen2")
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
HIDDEN = 64


# --- per-test isolation ------------------------------------------------------


@pytest.fixture(autouse=True)
def tagllm_home(tmp_path, monkeypatch) -> Path:
    """User tags and the job database go to a fresh folder for every test.

    TAGLLM_CACHE is not touched (see the module docstring).
    """
    home = tmp_path / "tagllm-home"
    monkeypatch.setenv("TAGLLM_HOME", str(home))
    return home


# --- tiny tokenizer and backbones ---------------------------------------------


def char_vocab() -> dict:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in string.printable:  # letters, digits, punctuation (SMILES), whitespace
        vocab.setdefault(c, len(vocab))
    return vocab


def make_char_tokenizer(add_bos: bool, with_pad: bool = True):
    """A character-level fast tokenizer: one printable-ASCII character per token.

    ``add_bos``: prepend ``<s>`` like Llama tokenizers do (exercises the
    PromptEncoder's BOS detection); GPT-2/Qwen2-style tokenizers do not.
    """
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = char_vocab()
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.add_special_tokens(list(SPECIAL_TOKENS))
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    kwargs = dict(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if with_pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(**kwargs)


VOCAB_SIZE = len(char_vocab())


def make_tiny_model(arch: str, seed: int = 0, n_positions: int = 2048):
    """A randomly initialised tiny causal LM of ``arch`` (deterministic for a seed)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=128, max_position_embeddings=n_positions,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB_SIZE, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=n_positions,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = GPT2LMHeadModel(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=128, max_position_embeddings=n_positions,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = Qwen2ForCausalLM(cfg)
    else:  # pragma: no cover - guards typos in parametrisation
        raise ValueError(arch)
    return model


def make_tiny_backbone(arch: str, seed: int = 0, dtype=torch.float32, name: Optional[str] = None,
                       device: str = "cpu") -> Backbone:
    model = make_tiny_model(arch, seed)
    tok = make_char_tokenizer(add_bos=(arch == "llama"))
    return wrap_model(model, tok, name or f"tiny-{arch}", device=device, dtype=dtype)


@pytest.fixture(scope="session")
def tiny_backbones() -> dict:
    """arch -> Backbone, built once per session."""
    return {arch: make_tiny_backbone(arch) for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def backbone(request, tiny_backbones) -> Backbone:
    """Parametrised over every tiny architecture."""
    return tiny_backbones[request.param]


@pytest.fixture
def llama(tiny_backbones) -> Backbone:
    return tiny_backbones["llama"]


@pytest.fixture
def gpt2(tiny_backbones) -> Backbone:
    return tiny_backbones["gpt2"]


# --- tag factories --------------------------------------------------------------

SMILES_TEMPLATE = "Input: The SMILES of the molecule is {smiles:<SMILES>}. Output: The property is <{name}>"


def make_domain_tag(backbone: Backbone, name: str = "SMILES", input_kind: str = "smiles", n_tokens: int = 2,
                    seed: int = 1, noise: float = 0.5) -> Tag:
    gen = torch.Generator().manual_seed(seed)
    vectors = init_tag_vectors(backbone.embedding_matrix, n_tokens, noise=noise, generator=gen)
    card = TagCard(name=name, kind="domain", backbone=backbone.fingerprint.to_dict(), n_tokens=n_tokens,
                   input_kind=input_kind, description=f"domain tag for {input_kind}")
    return Tag(card, vectors)


def make_function_tag(backbone: Backbone, name: str = "Func", template: Optional[str] = None,
                      slots=(("smiles", "smiles", "SMILES"),), task: str = "regression", n_outputs: int = 1,
                      classes: Optional[list] = None, readout: str = "last", n_tokens: int = 3,
                      domain_tokens: int = 2, label_scaling: Optional[dict] = None,
                      interval: Optional[dict] = None, seed: int = 0, noise: float = 0.5,
                      labels: Optional[list] = None) -> Tag:
    """A function tag with random vectors, random head and a snapshot of its domain tags.

    ``slots``: (slot name, kind, domain tag or None). ``template`` may contain
    ``{name}`` (the tag's name); by default it is built from the slots.
    """
    gen = torch.Generator().manual_seed(seed)
    if template is None:
        if len(slots) == 1 and slots[0][1] == "smiles":
            template = SMILES_TEMPLATE.replace("{smiles:<SMILES>}", "{%s%s}" % (
                slots[0][0], f":<{slots[0][2]}>" if slots[0][2] else ""))
        else:
            from tagllm_core.templates import default_template
            template = default_template(list(slots), name)
    template = template.replace("<{name}>", f"<{name}>")
    vectors = init_tag_vectors(backbone.embedding_matrix, n_tokens, noise=noise, generator=gen)
    domain_vectors = {}
    for i, (_, kind, dom) in enumerate(slots):
        if dom and dom not in domain_vectors:
            dgen = torch.Generator().manual_seed(seed + 100 + i)
            domain_vectors[dom] = init_tag_vectors(backbone.embedding_matrix, domain_tokens, noise=noise,
                                                   generator=dgen)
    in_dim = readout_dim(readout, backbone.hidden_size)
    head_state = {"weight": torch.randn(n_outputs, in_dim, generator=gen) * 0.3,
                  "bias": torch.randn(n_outputs, generator=gen)}
    if task == "regression" and label_scaling is None:
        label_scaling = {"mean": [5.0] * n_outputs, "std": [2.0] * n_outputs}
    if task == "classification":
        label_scaling = None
    card = TagCard(
        name=name, kind="function", backbone=backbone.fingerprint.to_dict(), n_tokens=n_tokens,
        description="test function tag", template=template,
        slots=[SlotSpec(s, k, d) for s, k, d in slots], task=task,
        labels=(list(labels) if labels else ["y"]) if task == "regression" else [], classes=list(classes or []),
        label_scaling=label_scaling, readout=readout,
        head={"task": task, "n_outputs": n_outputs, "in_dim": in_dim},
        metrics={"valid_rmse": 0.5}, interval=interval, label_sample=[1.0, 2.0, 3.5],
        training={"stage": "test", "lr": 1e-3},
    )
    return Tag(card, vectors, head_state, domain_vectors)


@pytest.fixture
def library_factory(tmp_path):
    """Make a TagLibrary for a backbone with user and bundled folders under tmp_path."""

    def make(backbone: Backbone, user: str = "user", bundled: str = "bundled") -> TagLibrary:
        return TagLibrary(backbone.fingerprint, user_dir=tmp_path / user / backbone.fingerprint.slug,
                          bundled_root=tmp_path / bundled)

    return make


@contextmanager
def count_block_calls(bb):
    """counts[i]: how often decoder block i (0-based) of ``bb`` ran inside the ``with``."""
    counts = [0] * len(bb.decoder_layers)
    handles = [block.register_forward_hook(lambda m, a, o, i=i: counts.__setitem__(i, counts[i] + 1))
               for i, block in enumerate(bb.decoder_layers)]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny Llama and its character tokenizer saved as a model folder (``TAGLLM_BACKBONE`` accepts a
    path), for tests that run the CLI or job processes: one per test module."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    make_tiny_model("llama").save_pretrained(folder)
    make_char_tokenizer(add_bos=True).save_pretrained(folder)
    return folder
