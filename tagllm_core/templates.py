"""Task formulations: template text -> one ``inputs_embeds`` sequence per row.

One mechanism for every task. A template is text with input slots, each
optionally marked with its domain tag, and the function tag at the very end::

    Input: The protein sequence is {sequence:<Protein>}. The SMILES of the drug
    is {smiles:<SMILES>}. Output: The binding affinity is <BindingAffinity>

``{smiles}`` is a slot without a domain tag; ``{smiles:none}`` says the same
explicitly. The read-out position is the last token of the function tag.

Tokenisation per input kind: proteins one residue per token (as in the
paper), SMILES and free text with the backbone's own tokenizer. Each row
becomes a ``RowPlan`` (token ids with holes where tag vectors go); ``collate``
pads plans to a batch and splices the tag vectors in, keeping autograd
through the vectors so the same code serves training and prediction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Optional, Union, cast

import torch

from .exceptions import TemplateError
from .tags import normalize_tag_name

__all__ = [
    "TextPiece",
    "SlotPiece",
    "TagPiece",
    "Template",
    "RowPlan",
    "TaggedBatch",
    "PromptEncoder",
    "collate",
    "default_template",
]

_PIECE_RE = re.compile(
    r"\{\s*(?P<slot>[A-Za-z_][A-Za-z0-9_]*)\s*(?::\s*(?P<dom><[^<>{}]+>|none)\s*)?\}"
    r"|<(?P<tag>[^<>{}\s]+)>"
)


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class SlotPiece:
    name: str
    domain_tag: Optional[str] = None


@dataclass(frozen=True)
class TagPiece:
    name: str


Piece = Union[TextPiece, SlotPiece, TagPiece]


@dataclass(frozen=True)
class Template:
    """A parsed task formulation. Use ``Template.parse(text)``."""

    pieces: tuple[Piece, ...]

    @classmethod
    def parse(cls, text: str) -> "Template":
        if not text or not text.strip():
            raise TemplateError("The template is empty.")
        pieces: list[Piece] = []
        pos = 0
        for m in _PIECE_RE.finditer(text):
            if m.start() > pos:
                pieces.append(TextPiece(text[pos:m.start()]))
            if m.group("slot"):
                dom = m.group("dom")
                dom_name = None if dom in (None, "none") else normalize_tag_name(dom)
                pieces.append(SlotPiece(m.group("slot"), dom_name))
            else:
                pieces.append(TagPiece(normalize_tag_name(m.group("tag"))))
            pos = m.end()
        tail = text[pos:]
        if tail.strip():
            raise TemplateError(
                f"The template must end with its function tag (e.g. '<Solubility>'), but ends with {tail.strip()!r}."
            )
        tags = [p for p in pieces if isinstance(p, TagPiece)]
        if len(tags) != 1 or not isinstance(pieces[-1], TagPiece):
            raise TemplateError(
                "A template needs exactly one function tag, at the end; domain tags go inside slots, "
                "as in '{smiles:<SMILES>}'."
            )
        slots = [p.name for p in pieces if isinstance(p, SlotPiece)]
        if not slots:
            raise TemplateError("The template has no input slot such as '{smiles:<SMILES>}'.")
        if len(set(slots)) != len(slots):
            raise TemplateError(f"A slot name appears twice in the template: {slots}.")
        return cls(tuple(pieces))

    @property
    def text(self) -> str:
        out = []
        for p in self.pieces:
            if isinstance(p, TextPiece):
                out.append(p.text)
            elif isinstance(p, SlotPiece):
                out.append("{" + p.name + (f":<{p.domain_tag}>" if p.domain_tag else "") + "}")
            else:
                out.append(f"<{p.name}>")
        return "".join(out)

    @property
    def slots(self) -> list[SlotPiece]:
        return [p for p in self.pieces if isinstance(p, SlotPiece)]

    @property
    def function_tag(self) -> str:
        return cast(TagPiece, self.pieces[-1]).name  # parse() puts the function tag last

    def with_domain_tags(self, mapping: dict) -> "Template":
        """A copy whose slots use other domain tags (``None`` removes one): the zero-shot swap."""
        unknown = set(mapping) - {s.name for s in self.slots}
        if unknown:
            raise TemplateError(f"No slot named {sorted(unknown)} in this template.")
        return Template(tuple(
            replace(p, domain_tag=mapping[p.name]) if isinstance(p, SlotPiece) and p.name in mapping else p
            for p in self.pieces
        ))

    def with_function_tag(self, name: str) -> "Template":
        return Template(self.pieces[:-1] + (TagPiece(normalize_tag_name(name)),))


def default_template(slots: list[tuple[str, str, Optional[str]]], function_tag: str, what: str = "property") -> str:
    """A readable template for ``slots`` = [(slot name, kind, domain tag or None)]::

        Task: aqueous solubility (log10 mol/L). Input: The SMILES of the molecule is {smiles}. Output: <Solubility>

    The task phrase stands before the inputs, where the shared prefix is computed once per call
    (``prefix_cache.shared_prefix``); after the last input only ". Output:" and the function tag
    remain, and those tokens are run for every row. Written as the paper's "Output: The {what} is
    <Tag>", the phrase cost 6-15 more tokens per row (about a third of a SMILES row) for no accuracy
    that ESOL and BACE could measure (docs/BENCHMARKS.md, "A shorter prompt")."""
    phrase = {"smiles": "The SMILES of the molecule is", "protein": "The protein sequence is", "text": "The input is"}
    parts = []
    for name, kind, dom in slots:
        tag = f":<{normalize_tag_name(dom)}>" if dom else ""
        parts.append(f"{phrase.get(kind, 'The input is')} {{{name}{tag}}}.")
    return f"Task: {what}. Input: {' '.join(parts)} Output: <{normalize_tag_name(function_tag)}>"


@dataclass
class RowPlan:
    """Token plan for one row, before embedding.

    ``ids``: token ids, with ``-1`` where tag vectors go; ``tags``: (tag name,
    start position) for each spliced tag; ``input_positions``: positions of the
    slots' content tokens (for read-outs that pool the input).
    """

    ids: list[int]
    tags: list[tuple[str, int]] = field(default_factory=list)
    input_positions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TaggedBatch:
    """A padded batch ready for the backbone.

    inputs_embeds: (B, T, d) in the backbone dtype; attention_mask: (B, T) long,
    right-padded; readout_index: (B,) position of each row's last function-tag
    token; input_mask: (B, T) float, 1 on slot-content tokens.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    readout_index: torch.Tensor
    input_mask: torch.Tensor


class PromptEncoder:
    """Tokenises templates and inputs for one backbone tokenizer.

    ``max_tokens`` caps each input's content length per kind (rows are cropped
    by ``domains`` before they get here, with a warning; this is the last guard).
    SMILES are never cropped here: a cut SMILES is another molecule, so ``domains``
    refuses over-long ones and stage 1 drops them from its corpus.
    """

    def __init__(self, tokenizer, max_tokens: Optional[dict] = None):
        self.tokenizer = tokenizer
        self.max_tokens = {"protein": 1024, "smiles": 256, "text": 512, **(max_tokens or {})}
        bos = tokenizer.bos_token_id
        probe = tokenizer("a").input_ids
        # Prepend BOS only where the tokenizer itself would (Llama-style models rely on it).
        self.bos = [bos] if bos is not None and len(probe) > 1 and probe[0] == bos else []
        self._residue: dict[str, list[int]] = {}
        self._text = lru_cache(maxsize=4096)(self._text_uncached)

    def _text_uncached(self, text: str) -> tuple:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def residue_ids(self, residue: str) -> list[int]:
        if residue not in self._residue:
            self._residue[residue] = list(self.tokenizer.encode(residue, add_special_tokens=False))
        return self._residue[residue]

    def content_ids(self, kind: str, value: str) -> list[int]:
        if kind == "protein":
            ids = [i for r in value for i in self.residue_ids(r)]
        else:
            ids = list(self._text(value))
        if kind == "smiles":
            return ids
        return ids[: self.max_tokens.get(kind, 512)]

    def plan(self, template: Template, slot_kinds: dict, inputs: dict, tag_lengths: dict) -> RowPlan:
        """One row's plan. ``slot_kinds``/``inputs``: slot -> kind / cleaned text;
        ``tag_lengths``: tag name -> p for every tag in the template."""
        ids: list[int] = list(self.bos)
        plan = RowPlan(ids)
        for piece in template.pieces:
            if isinstance(piece, TextPiece):
                # A tag or input follows: the boundary space belongs to neither, so drop trailing blanks.
                text = piece.text.rstrip(" ")
                if text:
                    ids.extend(self._text(text))
            elif isinstance(piece, SlotPiece):
                if piece.domain_tag:
                    self._add_tag(plan, piece.domain_tag, tag_lengths)
                start = len(ids)
                ids.extend(self.content_ids(slot_kinds[piece.name], inputs[piece.name]))
                plan.input_positions.extend(range(start, len(ids)))
            else:
                self._add_tag(plan, piece.name, tag_lengths)
        return plan

    @staticmethod
    def _add_tag(plan: RowPlan, name: str, tag_lengths: dict) -> None:
        if name not in tag_lengths:
            raise TemplateError(f"Tag <{name}> is used in the template but was not provided.")
        plan.tags.append((name, len(plan.ids)))
        plan.ids.extend([-1] * tag_lengths[name])


def collate(plans: list[RowPlan], embed, tag_vectors: dict, pad_id: int, dtype: torch.dtype,
            device: torch.device) -> TaggedBatch:
    """Pad ``plans`` on the right and splice tag vectors into the embeddings.

    ``embed``: callable (B, T) ids -> (B, T, d); ``tag_vectors``: name -> (p, d)
    tensor (may require grad; the splice is out-of-place so gradients flow).
    Right padding keeps every real token at the position it has alone, so a
    row's prediction does not depend on its batch mates.
    """
    B, T = len(plans), max(len(p) for p in plans)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    input_mask = torch.zeros((B, T), dtype=torch.float32)
    rows_idx: dict[str, list] = {}
    for b, plan in enumerate(plans):
        row = torch.tensor(plan.ids, dtype=torch.long)
        ids[b, : len(plan)] = row.clamp(min=0).masked_fill(row < 0, pad_id)
        attn[b, : len(plan)] = 1
        if plan.input_positions:
            input_mask[b, plan.input_positions] = 1.0
        for name, start in plan.tags:
            p = tag_vectors[name].shape[0]
            bucket = rows_idx.setdefault(name, [[], [], []])
            bucket[0].extend([b] * p)
            bucket[1].extend(range(start, start + p))
            bucket[2].extend(range(p))
    embeds = embed(ids.to(device))
    for name, (bi, ti, ki) in rows_idx.items():
        if not bi:  # a zero-length tag (the no-tag baseline) splices nothing
            continue
        vec = tag_vectors[name].to(device=device, dtype=dtype)
        at = (torch.tensor(bi, device=device), torch.tensor(ti, device=device))
        embeds = torch.index_put(embeds, at, vec[torch.tensor(ki, device=device)])
    readout = torch.tensor([len(p) - 1 for p in plans], dtype=torch.long, device=device)
    return TaggedBatch(embeds, attn.to(device), readout, input_mask.to(device))
