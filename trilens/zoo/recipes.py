"""Training recipes of the zoo's models: architecture, task mixture and optimiser settings.

The settings come from the recipe search recorded in RECIPES.md beside this file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Recipe:
    """Everything that determines one zoo model: same recipe + seed -> same model."""

    name: str
    family: str
    hf_class: str
    config: dict[str, Any]
    tasks: dict[str, float]  # task -> share of each batch
    logic_depths: tuple[int, ...] = (1, 2, 3)
    reverse_lengths: tuple[int, int] = (4, 24)
    steps: int = 12000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 1000
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    pool: int = 20000  # training examples drawn per task (and per logic depth)
    length_groups: int = 1  # >1: each batch runs as up to this many length-sorted micro-batches (same gradient)
    eval_n: int = 400  # held-out examples per task / depth / length bucket
    vocabulary: str = "tasks"  # "tasks" (logic, reverse, names, agreement) or "bilingual" (facts, translate)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "gpt": Recipe(
        name="gpt", family="decoder", hf_class="GPT2LMHeadModel",
        config=dict(n_layer=6, n_embd=128, n_head=4, n_inner=512, n_positions=64, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0),
        tasks={"logic": 0.5, "reverse": 0.2, "names": 0.15, "agreement": 0.15},
        steps=7000,
        length_groups=3,
    ),
    "bert": Recipe(
        name="bert", family="encoder", hf_class="BertForMaskedLM",
        config=dict(num_hidden_layers=6, hidden_size=128, num_attention_heads=4, intermediate_size=512,
                    max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        tasks={"logic": 0.6, "names": 0.2, "agreement": 0.2},
        logic_depths=(1, 2, 3, 4),  # not yet measured for BERT; it lifted T5's depth 3 (see RECIPES.md)
        steps=12000,
        length_groups=3,
    ),
    "t5": Recipe(
        name="t5", family="encoder-decoder", hf_class="T5ForConditionalGeneration",
        config=dict(num_layers=6, num_decoder_layers=2, d_model=128, d_kv=32, num_heads=4, d_ff=512,
                    dropout_rate=0.0),
        tasks={"logic": 0.6, "reverse": 0.4},
        logic_depths=(1, 2, 3, 4),
        lr=1e-3,
        steps=6500,
    ),
    "gpt-bi": Recipe(
        name="gpt-bi", family="decoder", hf_class="GPT2LMHeadModel",
        config=dict(n_layer=6, n_embd=128, n_head=4, n_inner=512, n_positions=32, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0),
        tasks={"facts": 0.9, "translate": 0.1}, vocabulary="bilingual",
        steps=4000, lr=1e-3, weight_decay=0.0,
    ),
    "t5-bi": Recipe(
        name="t5-bi", family="encoder-decoder", hf_class="T5ForConditionalGeneration",
        config=dict(num_layers=4, num_decoder_layers=4, d_model=128, d_kv=32, num_heads=4, d_ff=512,
                    dropout_rate=0.0),
        tasks={"facts": 0.9, "translate": 0.1}, vocabulary="bilingual",
        steps=4000, lr=1e-3, weight_decay=0.0,
    ),
}
