"""Templates: parsing, round trips, splicing tag vectors into a collated batch,
batch-size independence of features, and gradient flow into trainable tags.

Model-level tests run on every tiny architecture (see ``conftest.ARCHS``).
"""

from __future__ import annotations

import pytest
import torch

from tagllm_core.exceptions import TagLLMError, TagNameError, TemplateError
from tagllm_core.model import READOUTS, TaggedModel, pool_features, readout_dim, readout_hidden
from tagllm_core.templates import (
    PromptEncoder,
    RowPlan,
    SlotPiece,
    TagPiece,
    Template,
    TextPiece,
    collate,
    default_template,
)

SMILES_T = "Input: The SMILES of the molecule is {smiles:<SMILES>}. Output: The property is <Func>"
PAIR_T = ("Input: The protein sequence is {sequence:<Protein>}. The SMILES of the drug is "
          "{smiles:<SMILES>}. Output: The binding affinity is <BindingAffinity>")


# --- parsing --------------------------------------------------------------------


def test_parse_pieces_of_a_two_slot_template():
    t = Template.parse(PAIR_T)
    assert [type(p) for p in t.pieces] == [TextPiece, SlotPiece, TextPiece, SlotPiece, TextPiece, TagPiece]
    assert t.slots == [SlotPiece("sequence", "Protein"), SlotPiece("smiles", "SMILES")]
    assert t.function_tag == "BindingAffinity"
    assert t.pieces[0] == TextPiece("Input: The protein sequence is ")
    assert t.pieces[-2] == TextPiece(". Output: The binding affinity is ")


@pytest.mark.parametrize("slot_text", ["{x}", "{x:none}", "{ x : none }", "{ x }"])
def test_slot_without_domain_tag(slot_text):
    t = Template.parse(f"The input is {slot_text} so <F>")
    assert t.slots == [SlotPiece("x", None)]


def test_slot_whitespace_and_domain_tag_name_are_normalised():
    t = Template.parse("The input is { x : < SMILES > } so <F>")
    assert t.slots == [SlotPiece("x", "SMILES")]


def test_trailing_whitespace_after_function_tag_is_allowed():
    t = Template.parse("x is {x:<SMILES>} <F>  \n")
    assert t.function_tag == "F"
    assert isinstance(t.pieces[-1], TagPiece)


@pytest.mark.parametrize(
    "text",
    [
        "Output: <F> for {x:<SMILES>}",  # function tag not last
        "{x:<SMILES>} <F>.",  # text after the function tag
        "{x:<SMILES>} <F> and more words",
    ],
)
def test_function_tag_must_be_last(text):
    with pytest.raises(TemplateError, match="end"):
        Template.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "The SMILES is <SMILES> {x} <F>",  # domain tag outside a slot: two tags
        "{x:<SMILES>} <F> <G>",  # two function tags
        "{x} {y}",  # no tag at all... ends with a slot
    ],
)
def test_exactly_one_function_tag(text):
    with pytest.raises(TemplateError):
        Template.parse(text)


def test_two_bare_tags_error_mentions_slots():
    with pytest.raises(TemplateError, match="exactly one function tag"):
        Template.parse("The SMILES is <SMILES> {x} <F>")


@pytest.mark.parametrize("text", ["Predict <F>", "<F>", "no slots here <QED>"])
def test_template_without_slot_is_an_error(text):
    with pytest.raises(TemplateError, match="no input slot"):
        Template.parse(text)


def test_duplicate_slot_is_an_error():
    with pytest.raises(TemplateError, match="twice"):
        Template.parse("A {x:<SMILES>} and B {x:<SMILES>} give <F>")


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_template_is_an_error(text):
    with pytest.raises(TemplateError, match="empty"):
        Template.parse(text)


@pytest.mark.parametrize("text", ["{x} gives <a..b>", "{x:<a..b>} gives <F>"])
def test_unsafe_tag_names_in_templates_are_refused(text):
    with pytest.raises(TagNameError):
        Template.parse(text)
    assert issubclass(TagNameError, TagLLMError)


@pytest.mark.parametrize(
    "text",
    [
        SMILES_T,
        PAIR_T,
        "{x} <F>",
        "Input: {a:<SMILES>}{b:<Protein>} then {c} Output: <Out_1.v2>",
        "Multi\nline {seq:<Protein>}\n<F>",
    ],
)
def test_text_round_trip(text):
    t = Template.parse(text)
    assert t.text == text
    assert Template.parse(t.text) == t


def test_text_round_trip_normalises_none_and_spaces():
    t = Template.parse("A { x : none } and {y: <SMILES> } <F>")
    assert t.text == "A {x} and {y:<SMILES>} <F>"
    assert Template.parse(t.text) == t


def test_with_domain_tags_swaps_and_removes():
    t = Template.parse(PAIR_T)
    swapped = t.with_domain_tags({"smiles": "SELFIES", "sequence": None})
    assert swapped.slots == [SlotPiece("sequence", None), SlotPiece("smiles", "SELFIES")]
    assert "{sequence}" in swapped.text and "{smiles:<SELFIES>}" in swapped.text
    assert swapped.function_tag == "BindingAffinity"
    # the original is unchanged (frozen, copy-on-write)
    assert t.slots == [SlotPiece("sequence", "Protein"), SlotPiece("smiles", "SMILES")]
    # text pieces are kept exactly
    assert [p for p in swapped.pieces if isinstance(p, TextPiece)] == [
        p for p in t.pieces if isinstance(p, TextPiece)
    ]
    assert Template.parse(swapped.text) == swapped


def test_with_domain_tags_unknown_slot():
    with pytest.raises(TemplateError, match="nope"):
        Template.parse(SMILES_T).with_domain_tags({"nope": "SMILES"})


def test_with_function_tag():
    t = Template.parse(SMILES_T).with_function_tag("<QED>")
    assert t.function_tag == "QED"
    assert t.text.endswith("<QED>")


def test_default_template_parses():
    text = default_template([("sequence", "protein", "Protein"), ("smiles", "smiles", None)], "<Kd>", "affinity")
    t = Template.parse(text)
    assert t.function_tag == "Kd"
    assert t.slots == [SlotPiece("sequence", "Protein"), SlotPiece("smiles", None)]
    assert text.startswith("Task: affinity. Input: ") and text.endswith(". Output: <Kd>")
    # only ". Output: " separates the last input from the tag: the task phrase sits in the shared prefix
    assert t.pieces[0] == TextPiece("Task: affinity. Input: The protein sequence is ")
    assert t.pieces[-2] == TextPiece(". Output: ")


# --- row plans and splicing -----------------------------------------------------------


def _tag_vectors(backbone, lengths: dict, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p, backbone.hidden_size, generator=gen) for n, p in lengths.items()}


def test_plan_layout(backbone):
    enc = PromptEncoder(backbone.tokenizer)
    t = Template.parse(SMILES_T)
    lengths = {"SMILES": 2, "Func": 3}
    plan = enc.plan(t, {"smiles": "smiles"}, {"smiles": "CCO"}, lengths)
    tok = backbone.tokenizer
    bos = [tok.bos_token_id] if backbone.name == "tiny-llama" else []
    assert enc.bos == bos
    prefix = tok.encode("Input: The SMILES of the molecule is", add_special_tokens=False)  # trailing blank dropped
    middle = tok.encode(". Output: The property is", add_special_tokens=False)
    content = tok.encode("CCO", add_special_tokens=False)
    expected = bos + prefix + [-1, -1] + content + middle + [-1, -1, -1]
    assert plan.ids == expected
    dom_start = len(bos) + len(prefix)
    assert plan.tags == [("SMILES", dom_start), ("Func", len(expected) - 3)]
    assert plan.input_positions == list(range(dom_start + 2, dom_start + 2 + len(content)))
    assert len(plan) == len(expected)


def test_protein_is_one_residue_per_token(backbone):
    enc = PromptEncoder(backbone.tokenizer)
    t = Template.parse("Input: The protein sequence is {seq:<Protein>}. Output: <F>")
    seq = "MKTAYIAKQRQISFVKSHFSRQ"
    plan = enc.plan(t, {"seq": "protein"}, {"seq": seq}, {"Protein": 4, "F": 2})
    assert len(plan.input_positions) == len(seq)
    content = [plan.ids[i] for i in plan.input_positions]
    assert content == [backbone.tokenizer.convert_tokens_to_ids(r) for r in seq]


def test_protein_residues_are_not_merged_by_bpe():
    """With a tokenizer that merges residue pairs, proteins still get one token per residue."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from conftest import char_vocab

    vocab = char_vocab()
    merges = [("M", "K"), ("T", "A"), ("C", "C")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    assert len(tok.encode("MKTAY", add_special_tokens=False)) == 3  # the merges are real
    enc = PromptEncoder(tok)
    t = Template.parse("P {seq:<Protein>} S {smi} <F>")
    plan = enc.plan(t, {"seq": "protein", "smi": "smiles"}, {"seq": "MKTAYMK", "smi": "CCO"}, {"Protein": 1, "F": 1})
    content = [plan.ids[i] for i in plan.input_positions]
    assert content[:7] == [vocab[r] for r in "MKTAYMK"]
    assert content[7:] == [vocab["CC"], vocab["O"]]  # SMILES keep the tokenizer's own merges


def test_content_is_cropped_to_max_tokens_except_smiles(backbone):
    enc = PromptEncoder(backbone.tokenizer, max_tokens={"protein": 5, "smiles": 3, "text": 4})
    t = Template.parse("{seq:<Protein>} and {smi} and {txt} <F>")
    plan = enc.plan(t, {"seq": "protein", "smi": "smiles", "txt": "text"},
                    {"seq": "MKTAYIAK", "smi": "CCCCCC", "txt": "abcdefgh"}, {"Protein": 1, "F": 1})
    n_smiles = len(enc.content_ids("smiles", "CCCCCC"))
    assert n_smiles > 3  # a cropped SMILES is another molecule: domains refuses over-long ones instead
    assert len(plan.input_positions) == 5 + n_smiles + 4
    assert enc.content_ids("smiles", "CCCCCC") == list(enc._text("CCCCCC"))


def test_plan_with_unknown_tag_is_an_error(backbone):
    enc = PromptEncoder(backbone.tokenizer)
    with pytest.raises(TemplateError, match="SMILES"):
        enc.plan(Template.parse(SMILES_T), {"smiles": "smiles"}, {"smiles": "CCO"}, {"Func": 2})


def test_collate_splices_tag_vectors_exactly(backbone):
    enc = PromptEncoder(backbone.tokenizer)
    t = Template.parse(PAIR_T)
    lengths = {"Protein": 3, "SMILES": 2, "BindingAffinity": 4}
    vectors = _tag_vectors(backbone, lengths)
    rows = [("MKTAYIAKQRQ", "CCO"), ("MK", "c1ccccc1C(=O)O"), ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "O")]
    plans = [enc.plan(t, {"sequence": "protein", "smiles": "smiles"}, {"sequence": s, "smiles": m}, lengths)
             for s, m in rows]
    pad = backbone.tokenizer.pad_token_id
    batch = collate(plans, backbone.embed_ids, vectors, pad, backbone.dtype, backbone.device)
    B, T = len(plans), max(len(p) for p in plans)
    assert batch.inputs_embeds.shape == (B, T, backbone.hidden_size)
    assert batch.inputs_embeds.dtype == backbone.dtype
    emb = backbone.embedding_matrix
    for b, plan in enumerate(plans):
        n = len(plan)
        tag_pos = set()
        for name, start in plan.tags:
            p = lengths[name]
            assert torch.equal(batch.inputs_embeds[b, start:start + p], vectors[name].to(backbone.dtype))
            tag_pos.update(range(start, start + p))
        assert len(tag_pos) == sum(lengths.values())
        for i in range(T):
            if i in tag_pos:
                continue
            token = plan.ids[i] if i < n else pad
            assert token >= 0
            assert torch.equal(batch.inputs_embeds[b, i], emb[token]), (b, i)
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (T - n)
        assert int(batch.readout_index[b]) == n - 1
        # the read-out is the last token of the function tag
        fname, fstart = plan.tags[-1]
        assert fname == "BindingAffinity" and fstart + lengths[fname] - 1 == n - 1
        mask = batch.input_mask[b]
        assert mask.nonzero().flatten().tolist() == plan.input_positions
        assert int(mask.sum()) == len(rows[b][0]) + len(backbone.tokenizer.encode(rows[b][1], add_special_tokens=False))


def test_collate_same_domain_tag_twice(backbone):
    enc = PromptEncoder(backbone.tokenizer)
    t = Template.parse("A {a:<SMILES>} B {b:<SMILES>} <F>")
    lengths = {"SMILES": 2, "F": 1}
    vectors = _tag_vectors(backbone, lengths, seed=3)
    plan = enc.plan(t, {"a": "smiles", "b": "smiles"}, {"a": "CC", "b": "O"}, lengths)
    batch = collate([plan], backbone.embed_ids, vectors, backbone.tokenizer.pad_token_id, backbone.dtype,
                    backbone.device)
    starts = [s for n, s in plan.tags if n == "SMILES"]
    assert len(starts) == 2
    for s in starts:
        assert torch.equal(batch.inputs_embeds[0, s:s + 2], vectors["SMILES"])


# --- the tagged model: batch independence and gradients -----------------------------------


def _model(backbone, readout="last", trainable=frozenset(), slots_template=SMILES_T, seed=0):
    t = Template.parse(slots_template)
    vectors = _tag_vectors(backbone, {"SMILES": 2, "Func": 3}, seed=seed)
    for v in vectors.values():
        v.mul_(0.05)  # about the scale of token embeddings
    return TaggedModel(backbone, t, {"smiles": "smiles"}, vectors, trainable=trainable, readout=readout)


def _probe(x: torch.Tensor) -> torch.Tensor:
    """A scalar that depends on the direction of the features.

    (A plain sum, or sum of squares, is nearly constant after GPT-2's LayerNorm,
    so it would give vanishing gradients for reasons that have nothing to do with tags.)
    """
    w = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype, device=x.device)
    return (x * w).sum()


ROWS = ["CCO", "c1ccccc1C(=O)Oc1ccccc1", "C", "CC(=O)Nc1ccc(O)cc1", "O=C=O", "CCCCCCCCCCCCCCCCCCCCCCCC"]


@pytest.mark.parametrize("readout", READOUTS)
def test_features_do_not_depend_on_batch_mates(backbone, readout):
    model = _model(backbone, readout)
    plans = [model.plan({"smiles": s}) for s in ROWS]
    lengths = [len(p) for p in plans]
    assert len(set(lengths)) > 3  # really different lengths, so padding happens
    with torch.inference_mode():
        batched = model.features(plans)
        alone = torch.cat([model.features([p]) for p in plans])
        reversed_ = model.features(plans[::-1]).flip(0)
    assert batched.shape == (len(ROWS), readout_dim(readout, backbone.hidden_size))
    assert batched.dtype == torch.float32
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reversed_, alone, atol=1e-5, rtol=1e-5)
    # the features really differ between rows (the test would pass trivially otherwise)
    assert (alone[0] - alone[1]).abs().max() > 1e-3


def test_readouts_are_consistent(backbone):
    plans = [_model(backbone).plan({"smiles": s}) for s in ROWS[:3]]
    feats = {r: _model(backbone, r).features(plans).detach() for r in READOUTS}
    d = backbone.hidden_size
    torch.testing.assert_close(feats["last+mean"][:, :d], feats["last"])
    torch.testing.assert_close(feats["last+mean"][:, d:], feats["mean"])
    assert not torch.allclose(feats["last"], feats["mean"])


def test_pool_features_by_hand():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    idx = torch.tensor([2, 3])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    last = pool_features(hidden, idx, mask, "last")
    torch.testing.assert_close(last, torch.stack([hidden[0, 2], hidden[1, 3]]))
    mean = pool_features(hidden, idx, mask, "mean")
    torch.testing.assert_close(mean, torch.stack([hidden[0, :2].mean(0), hidden[1, 1:3].mean(0)]))
    both = pool_features(hidden, idx, mask, "last+mean")
    torch.testing.assert_close(both, torch.cat([last, mean], 1))


def test_unknown_readout_is_refused(backbone):
    with pytest.raises(TemplateError, match="read-out"):
        _model(backbone, readout="first")


def test_missing_slot_kind_is_refused(backbone):
    t = Template.parse(PAIR_T)
    with pytest.raises(TemplateError, match="sequence"):
        TaggedModel(backbone, t, {"smiles": "smiles"}, _tag_vectors(backbone, {"Protein": 1, "SMILES": 1,
                                                                                 "BindingAffinity": 1}))


def test_readout_hidden_matches_the_base_model_on_plain_tokens(backbone):
    """With no tags, the spliced path is exactly the model's own forward on token ids."""
    from tagllm_core.templates import TaggedBatch

    ids = torch.tensor([backbone.tokenizer.encode("CCO is ethanol", add_special_tokens=False)])
    batch = TaggedBatch(backbone.embed_ids(ids), torch.ones_like(ids), torch.tensor([ids.shape[1] - 1]),
                        torch.zeros(ids.shape, dtype=torch.float32))
    with torch.inference_mode():
        ours = readout_hidden(backbone, batch)
        ref = backbone.base(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("readout", ["last", "last+mean"])
def test_gradients_reach_trainable_tags_only(backbone, readout):
    model = _model(backbone, readout, trainable=frozenset({"Func"}))
    func, dom = model.tag("Func"), model.tag("SMILES")
    assert func.requires_grad and not dom.requires_grad
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(func)}
    feats = model.features([model.plan({"smiles": s}) for s in ROWS[:3]])
    assert feats.requires_grad
    _probe(feats).backward()
    assert func.grad is not None
    assert torch.isfinite(func.grad).all()
    assert func.grad.abs().sum() > 0
    assert func.grad.abs().sum(1).gt(0).all()  # every one of the p vectors gets a gradient
    assert dom.grad is None
    assert all(p.grad is None for p in backbone.model.parameters())


def test_gradients_reach_a_trainable_domain_tag(backbone):
    model = _model(backbone, "last", trainable=frozenset({"SMILES"}))
    feats = model.features([model.plan({"smiles": "CCO"})])
    _probe(feats).backward()
    assert model.tag("SMILES").grad is not None and model.tag("SMILES").grad.abs().sum() > 0
    assert model.tag("Func").grad is None


def test_collate_keeps_autograd_to_raw_vectors(backbone):
    enc = PromptEncoder(backbone.tokenizer)
    lengths = {"SMILES": 2, "Func": 3}
    vectors = _tag_vectors(backbone, lengths)
    vectors["Func"].requires_grad_(True)
    plans = [enc.plan(Template.parse(SMILES_T), {"smiles": "smiles"}, {"smiles": s}, lengths) for s in ROWS[:2]]
    batch = collate(plans, backbone.embed_ids, vectors, backbone.tokenizer.pad_token_id, backbone.dtype,
                    backbone.device)
    hidden = readout_hidden(backbone, batch)
    _probe(hidden[torch.arange(2), batch.readout_index]).backward()
    assert vectors["Func"].grad is not None and vectors["Func"].grad.abs().sum() > 0
    assert vectors["SMILES"].grad is None
    # the splice is out of place: the embedding matrix is untouched and gets no gradient
    assert backbone.embedding_matrix.grad is None


def test_head_gets_gradients_too(backbone):
    from tagllm_core.heads import HeadConfig, build_head

    model = _model(backbone, "last", trainable=frozenset({"Func"}))
    model.head = build_head(HeadConfig("regression", 1, backbone.hidden_size))
    plans = [model.plan({"smiles": s}) for s in ROWS[:4]]
    out = model(plans)
    assert out.shape == (4, 1)
    model.head.loss(out, torch.zeros(4, 1)).backward()
    assert model.head.linear.weight.grad.abs().sum() > 0
    assert model.tag("Func").grad.abs().sum() > 0


def test_rowplan_len():
    assert len(RowPlan([1, 2, -1])) == 3
