"""The language lens: per layer, where the gold answer ranks in each language, which language the lens's top tokens
are in, and how close parallel prompts' residual streams are (Wang et al., ACL 2025, "Lost in Multilinguality")."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..inputs import token_names
from ..provenance import provenance
from .language_result import LanguageLensResult
from .languages import LanguageMap, answer_table, parallel_facts, read_layers, slot_states, token_language
from .unembed import Unembed

if TYPE_CHECKING:
    from ..model import Model


def _cosines(states: torch.Tensor, facts: list[Hashable], languages: Sequence[str]
             ) -> tuple[list[tuple[int, int]], torch.Tensor, dict[tuple[str, str], torch.Tensor]]:
    """Per layer, the cosine of every parallel pair (same fact, two languages) and, per language pair, the mean cosine
    of non-parallel pairs (different facts): the baseline a shared space must beat."""
    unit = torch.nn.functional.normalize(states, dim=-1)
    by_fact: dict[Hashable, dict[str, int]] = {}
    for i, (fact, lang) in enumerate(zip(facts, languages)):
        by_fact.setdefault(fact, {}).setdefault(lang, i)
    pairs = [(held[a], held[b]) for held in by_fact.values() for a, b in combinations(sorted(held), 2)]
    cos = (unit[:, [i for i, _ in pairs]] * unit[:, [j for _, j in pairs]]).sum(-1) if pairs else torch.empty(states.shape[0], 0)
    baseline = {}
    fact_ids = {f: i for i, f in enumerate(by_fact)}
    code = torch.tensor([fact_ids[f] for f in facts])
    for a, b in combinations(sorted(set(languages)), 2):
        ia = torch.tensor([i for i, lang in enumerate(languages) if lang == a])
        ib = torch.tensor([i for i, lang in enumerate(languages) if lang == b])
        other = code[ia][:, None] != code[ib][None, :]
        if bool(other.any()):
            sims = torch.einsum("lid,ljd->lij", unit[:, ia], unit[:, ib])
            baseline[(a, b)] = sims[:, other].mean(-1)
    return pairs, cos, baseline


def language_lens(model: Model, prompts: Sequence[str], answers: Sequence[Any], languages: Sequence[str], *,
                  facts: Sequence[Hashable] | None = None, language_map: LanguageMap | None = None, k: int = 10,
                  batch_size: int = 64) -> LanguageLensResult:
    """The logit lens at the answer slot of each prompt, read per language.

    Args:
        prompts: texts that end where the answer starts (the decoder stack; an encoder-decoder's decoder reads the
            whole encoder and predicts the answer at its first step).
        answers: per prompt, the gold answer in every language as a dict (``{"en": "red", "vo": "rubo"}``), or one
            word in the prompt's own language. Each answer must be one token.
        languages: the language each prompt is written in.
        facts: which fact each prompt asks (parallel prompts share it); default: the i-th prompt of each language.
        language_map: token -> language (a dict or a function); default: the model's own map (``languages.json``).
        k: top tokens per layer whose language is counted.
    """
    languages = [str(x) for x in languages]
    if len(languages) != len(prompts):
        raise InputError(f"{len(languages)} languages for {len(prompts)} prompts: give the language of every prompt.")
    lang_of = token_language(model, language_map)
    fact_ids = parallel_facts(languages, facts)
    answer_langs, ids = answer_table(model, answers, languages)
    states = slot_states(model, prompts, batch_size=batch_size)
    unembed = Unembed(model, model.stacks[-1])
    k = min(k, model.vocab_size)
    rank, prob, top_ids, top_probs = read_layers(unembed, states, ids, k)
    used = sorted(set(top_ids.unique().tolist()) | set(ids[ids >= 0].unique().tolist()))
    vocab = dict(zip(used, token_names(model.tokenizer, used)))
    token_langs = {i: lang_of(tok.lstrip("Ġ▁ ") if isinstance(tok, str) else str(tok)) for i, tok in vocab.items()}
    pairs, cos, baseline = _cosines(states, fact_ids, languages)
    params = {"k": k, "n_prompts": len(prompts), "answer_languages": answer_langs, "stack": model.stacks[-1]}
    return LanguageLensResult(
        prompts=list(prompts), languages=languages, facts=[str(f) for f in fact_ids], answer_languages=answer_langs,
        answer_ids=ids, rank=rank, prob=prob, top_ids=top_ids, top_probs=top_probs, vocab=vocab,
        token_languages={i: lang for i, lang in token_langs.items() if lang is not None}, pairs=pairs, cosine=cos,
        baseline=baseline, info=provenance(model, "language lens", params, len(prompts)))


__all__: Sequence[str] = ["language_lens"]
