"""Tag builders shared by tests and benches; no pytest, so ``bench/`` can import it.

Needs the repository root on ``sys.path`` (for ``tagllm_core``); importers put
this folder there too. ``conftest.make_function_tag`` stays the builder for
the tiny test backbones.
"""

from __future__ import annotations

import torch

from tagllm_core.backbone import Backbone
from tagllm_core.heads import HeadConfig
from tagllm_core.tags import SlotSpec, Tag, TagCard, init_tag_vectors

# Same wording as the bundled <Solubility> tag, so a synthetic tag costs the same tokens per row.
SOLUBILITY_TEMPLATE = ("Input: The SMILES of the molecule is {smiles}. "
                       "Output: The aqueous solubility (log10 mol/L) is <%s>")


def synthetic_solubility_tag(backbone: Backbone, name: str,
                             description: str = "untrained synthetic tag (random head)", seed: int = 0) -> Tag:
    """An untrained SMILES -> solubility regression tag (last+mean read-out) for any backbone, e.g. the real one."""
    gen = torch.Generator().manual_seed(seed)
    in_dim = 2 * backbone.hidden_size  # the last+mean read-out
    card = TagCard(
        name=name, kind="function", backbone=backbone.fingerprint.to_dict(), n_tokens=10,
        description=description, template=SOLUBILITY_TEMPLATE % name,
        slots=[SlotSpec("smiles", "smiles", None)], task="regression", labels=["y"],
        label_scaling={"mean": [-3.0], "std": [2.0]}, readout="last+mean",
        head=HeadConfig("regression", 1, in_dim).to_dict(),
        # so the app shows what a trained tag has: percentiles/histogram and lower/upper intervals
        label_sample=[-6.0, -4.5, -3.0, -2.0, -1.0, 0.5], interval={"level": 0.9, "halfwidth": [1.0]},
    )
    vectors = init_tag_vectors(backbone.embedding_matrix, 10, generator=gen)
    # a small head keeps the untrained predictions near the label mean
    head = {"weight": torch.randn(1, in_dim, generator=gen) * 0.01, "bias": torch.zeros(1)}
    return Tag(card, vectors, head)
