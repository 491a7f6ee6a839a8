"""Stage 1: a domain tag learned by next-token prediction on in-domain text placed after the tag
(the loss on the domain tokens only), and its perplexity against no tag and a random one.

SMILES are standardised as prediction standardises them (``standardize.clean_for_model``): the tag
learns the parent molecules that function tags and prediction will put after it, and the training
warnings count what standardisation changed."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import torch

from .backbone import Backbone
from .distributed import make_accelerator, stop_if_cancelled, sync_grads
from .domains import KINDS
from .exceptions import TrainingError
from .progress import ProgressCallback
from .standardize import clean_for_model, training_summary
from .tags import Tag, TagCard, TagLibrary, init_tag_vectors, normalize_tag_name
from .templates import PromptEncoder
from .train_fit import finite_step
from .train_progress import StageProgress

__all__ = ["DomainTagConfig", "DomainTrainResult", "domain_perplexity", "train_domain_tag"]


@dataclass
class DomainTagConfig:
    name: str
    input_kind: str  # "smiles" | "protein" | "text"
    n_tokens: int = 10
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    max_tokens: int = 128  # crop each sequence to this many tokens (longer SMILES are dropped, not cropped)
    valid_fraction: float = 0.1
    max_valid: int = 64
    seed: int = 0
    init_text: Optional[str] = None  # initialise from this text's token embeddings
    description: str = ""

    def __post_init__(self):
        self.name = normalize_tag_name(self.name)
        if self.input_kind not in KINDS:
            raise TrainingError(f"Unknown input kind {self.input_kind!r}.")


@dataclass
class DomainTrainResult:
    tag: Tag
    perplexity: dict[str, Any]  # {"trained": .., "no_tag": .., "random_tag": ..}
    history: list[dict[str, Any]]
    dropped: int
    path: Optional[Path] = None
    warnings: list[str] = field(default_factory=list)  # sentences for the user, also in card.training["warnings"]


def _lm_batch(backbone: Backbone, encoder: PromptEncoder, ids_list: list, tag: Optional[torch.Tensor]):
    """Batch for next-token loss: [BOS] [tag] content. Returns (embeds, mask, targets (B,T) with -100)."""
    bb = backbone
    p = 0 if tag is None else tag.shape[0]
    prefix = len(encoder.bos)
    T = max(prefix + p + len(ids) for ids in ids_list)
    B = len(ids_list)
    tok = torch.full((B, T), bb.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    targets = torch.full((B, T), -100, dtype=torch.long)
    for b, ids in enumerate(ids_list):
        start = prefix + p
        if encoder.bos:
            tok[b, 0] = encoder.bos[0]
        tok[b, start:start + len(ids)] = torch.tensor(ids)
        mask[b, : start + len(ids)] = 1
        # position t predicts token t+1: the loss covers content tokens 2..n, identical for every
        # variant (trained tag / no tag / random tag), so their perplexities are comparable.
        targets[b, start: start + len(ids) - 1] = torch.tensor(ids[1:])
    embeds = bb.embed_ids(tok)
    if tag is not None:
        start = prefix
        vec = tag.to(bb.dtype).unsqueeze(0).expand(B, -1, -1)
        embeds = torch.cat([embeds[:, :start], vec, embeds[:, start + p:]], dim=1)
    return embeds, mask.to(bb.device), targets.to(bb.device)


def _lm_loss(backbone: Backbone, embeds, mask, targets) -> tuple[torch.Tensor, int]:
    hidden = backbone.base(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    sel = targets != -100
    logits = backbone.model.get_output_embeddings()(hidden[sel]).float()  # only where there is a target
    return torch.nn.functional.cross_entropy(logits, targets[sel]), int(sel.sum())


def domain_perplexity(backbone: Backbone, encoder: PromptEncoder, ids_list: list, tag: Optional[torch.Tensor],
                      batch_size: int = 8) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids_list), batch_size):
            loss, n = _lm_loss(backbone, *_lm_batch(backbone, encoder, ids_list[s:s + batch_size], tag))
            total += float(loss) * n
            count += n
    return math.exp(total / max(count, 1))


def train_domain_tag(backbone: Backbone, library: Optional[TagLibrary], cfg: DomainTagConfig, corpus: list,
                     progress: Optional[ProgressCallback] = None, save: bool = True,
                     data_name: str = "") -> DomainTrainResult:
    """Stage 1: learn ``<cfg.name>`` by next-token prediction on ``corpus`` (loss on domain tokens only)."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if library is not None and save and library.exists(cfg.name):
        raise TrainingError(f"A tag named <{cfg.name}> already exists; choose another name or delete it.")
    encoder = PromptEncoder(backbone.tokenizer, {cfg.input_kind: cfg.max_tokens})
    seqs, dropped = [], 0
    changed: list[tuple[int, list[str]]] = []  # (1-based corpus line, sentences) per standardised SMILES
    flagged: list[tuple[int, list[str]]] = []
    for n, text in enumerate(corpus, start=1):
        c, changes, flags = clean_for_model(cfg.input_kind, text)
        ids = encoder.content_ids(cfg.input_kind, cast(str, c.value)) if c.ok else []
        # Proteins and text are cropped to max_tokens by the encoder; a cropped SMILES would be
        # another molecule, so an over-long one is dropped like an invalid one.
        if c.ok and len(ids) <= cfg.max_tokens:
            seqs.append(ids)
            changed += [(n, changes)] if changes else []
            flagged += [(n, flags)] if flags else []
        else:
            dropped += 1
    seqs = [s for s in seqs if len(s) >= 2]
    if len(seqs) < 8:
        raise TrainingError(f"Only {len(seqs)} usable sequences in the corpus; at least 8 are needed.")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(seqs))
    n_valid = min(cfg.max_valid, max(2, int(len(seqs) * cfg.valid_fraction)))
    valid = [seqs[i] for i in order[:n_valid]]
    train = [seqs[i] for i in order[n_valid:]]
    gen = torch.Generator().manual_seed(cfg.seed)
    from_ids = None
    if cfg.init_text:
        from_ids = torch.tensor(backbone.tokenizer.encode(cfg.init_text, add_special_tokens=False))
    init = init_tag_vectors(backbone.embedding_matrix, cfg.n_tokens, generator=gen, from_ids=from_ids)
    random_tag = init_tag_vectors(backbone.embedding_matrix, cfg.n_tokens,
                                  generator=torch.Generator().manual_seed(cfg.seed + 1))
    tag = torch.nn.Parameter(init.clone().to(backbone.device))
    accelerator = make_accelerator(backbone, cfg.grad_accum)
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    optimizer = accelerator.prepare(torch.optim.Adam([tag], lr=cfg.lr))
    report = StageProgress(progress if main else None, "stage1", cfg.steps, defer_cancel=world > 1)
    for sentence in training_summary(changed, flagged, "corpus"):
        report.warn(sentence)
    # Length bucketing: batches of similar length waste little on padding.
    by_len = sorted(range(len(train)), key=lambda i: len(train[i]))
    buckets = [by_len[s:s + cfg.batch_size] for s in range(0, len(by_len), cfg.batch_size)]
    history, step, tokens = [], 0, 0
    eval_every = max(1, cfg.steps // 5)
    stopped = False
    while step < cfg.steps and not stopped:
        for bi in rng.permutation(len(buckets)):
            rows = buckets[bi]
            mine = rows[rank::world]  # this process's share of the batch
            n_batch = sum(len(train[i]) - 1 for i in rows)  # predicted tokens in the whole batch
            with accelerator.accumulate(tag):
                if mine:
                    embeds, mask, targets = _lm_batch(backbone, encoder, [train[i] for i in mine], tag)
                    loss, n = _lm_loss(backbone, embeds, mask, targets)
                    loss = loss * (n / n_batch)  # token mean over the whole batch, in per-process parts
                else:
                    loss = tag.sum() * 0.0
                accelerator.backward(loss)
                # Gradients are summed across processes only when the optimizer steps (the end of an
                # accumulation); the loss on every micro-step.
                synced = accelerator.sync_gradients
                loss = torch.tensor(sync_grads(accelerator, [tag], loss, grads=synced))
                # Checked before the step, so the tag stays the last finite one (the loss and the synced
                # gradients are summed over processes, so every rank stops at the same step).
                if not finite_step(float(loss), [tag] if synced else []):
                    stopped = True
                    report.warn(f"Training stopped at step {step + 1} of {cfg.steps}: the loss or its gradient "
                                f"became non-finite (NaN or infinity). The tag after step {step}, the last "
                                f"finite one, was kept; a lower learning rate may let training go further.")
                    break
                optimizer.step()
                optimizer.zero_grad()
            step += 1
            tokens += n_batch
            metrics = {}
            if step % eval_every == 0 or step == cfg.steps:
                metrics = {"valid_perplexity": domain_perplexity(backbone, encoder, valid, tag.detach())}
                history.append({"step": step, "train_loss": loss.item(), **metrics})
            report(step, loss=loss.item(), metrics=metrics, examples=tokens, message="tokens/s")
            stop_if_cancelled(accelerator, report)
            if step >= cfg.steps:
                break
    if not torch.isfinite(tag).all():  # a finite loss can still step into overflow; never save such a tag
        raise TrainingError("The domain tag became non-finite (NaN or infinity) during training; "
                            "try a lower learning rate.")
    ppl = {
        "trained": domain_perplexity(backbone, encoder, valid, tag.detach()),
        "no_tag": domain_perplexity(backbone, encoder, valid, None),
        "random_tag": domain_perplexity(backbone, encoder, valid, random_tag.to(backbone.device)),
        "n_valid_sequences": len(valid),
    }
    card = TagCard(
        name=cfg.name, kind="domain", backbone=backbone.fingerprint.to_dict(), n_tokens=cfg.n_tokens,
        description=cfg.description, input_kind=cfg.input_kind, metrics={"valid_perplexity": ppl},
        training={"stage": 1, "data": data_name, "sequences_train": len(train), "sequences_dropped": dropped,
                  "steps": cfg.steps, "steps_run": step, "tokens_seen": tokens,
                  "seconds": round(time.perf_counter() - t_start, 1), "config": asdict(cfg), "history": history,
                  "warnings": report.warnings},
    )
    result_tag = Tag(card, tag.detach().float().cpu())
    path = library.save(result_tag) if (save and library is not None and main) else None
    return DomainTrainResult(result_tag, ppl, history, dropped, path, report.warnings)
