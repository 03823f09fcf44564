"""What the language analyses share: which language a token belongs to, one-token answers, the answer slot's
residual stream, and cross-lingual consistency (Wang et al., ACL 2025, "Lost in Multilinguality")."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from itertools import combinations
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from .unembed import Unembed

if TYPE_CHECKING:
    from ..model import Model

LanguageMap = Mapping[str, str] | Callable[[str], "str | None"]


def token_language(model: Model, language_map: LanguageMap | None = None) -> Callable[[str], str | None]:
    """A token -> language function: ``language_map`` (a dict or a function) or the model's own map.

    A model folder that holds ``languages.json`` (token -> language, as the zoo's bilingual models do) gives the model
    its map; for any other model pass one (e.g. a function that runs a language identifier on the token)."""
    found = language_map if language_map is not None else getattr(model, "language_map", None)
    if found is None:
        raise InputError(f"{model.name} has no language map: pass language_map= (a dict token -> language, or a "
                         "function of the token string) to say which language each vocabulary token belongs to.")
    if callable(found) and not isinstance(found, Mapping):
        return found
    table = dict(found)
    return table.get


def answer_id(model: Model, answer: str) -> int:
    """The one token ``answer`` is, as it follows a prompt (a leading space is added when it has none)."""
    text = answer if answer.startswith(" ") else " " + answer
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        raise InputError(f"the answer {answer!r} is {len(ids)} tokens here ({pieces}); the lens ranks one token: pass "
                         "the answer's first token, or choose answers that are one token in this vocabulary.")
    unk = model.tokenizer.unk_token_id
    if unk is not None and ids[0] == unk and answer.strip() != model.tokenizer.unk_token:
        raise InputError(f"the answer {answer!r} is not in this model's vocabulary (it reads as "
                         f"{model.tokenizer.unk_token}): its rank would be the unknown token's.")
    return int(ids[0])


def answer_table(model: Model, answers: Sequence[Any], languages: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """(answer languages, ids ``[n, answer language]``, -1 where a prompt has no answer in that language)."""
    if len(answers) != len(languages):
        raise InputError(f"{len(answers)} answers for {len(languages)} prompts: give each prompt its answer (a word, "
                         "or a dict language -> word for the answer in every language).")
    per = [dict(a) if isinstance(a, Mapping) else {lang: a} for a, lang in zip(answers, languages)]
    if any(not a for a in per):
        raise InputError("a prompt has no answer: give each prompt its gold answer in at least its own language.")
    langs = sorted({lang for a in per for lang in a})
    ids = torch.tensor([[answer_id(model, a[lang]) if lang in a else -1 for lang in langs] for a in per])
    return langs, ids


def slot_inputs(model: Model, prompts: Sequence[str]) -> list[Any]:
    """Inputs whose last position predicts the answer: the prompts (decoder-only) or (prompt, one end token) pairs,
    whose decoder holds only the start token (encoder-decoder)."""
    if model.family == "encoder":
        raise InputError("the language lens reads the next-token prediction of a decoder-only or encoder-decoder "
                         "model; an encoder's masked slot is read with trilens.lens.lens_at_answers.")
    if not prompts:
        raise InputError("no prompts: pass at least one prompt (the text before the answer).")
    if model.family == "encoder-decoder":
        end = model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else model.pad_token_id
        return [(p, [end]) for p in prompts]
    return list(prompts)


def slot_states(model: Model, prompts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """The residual stream at the answer slot after the embeddings and every block: ``[n_layers + 1, n, d]``
    (the decoder stack; an encoder-decoder's decoder reads the whole encoder)."""
    stack = model.stacks[-1]
    sites = model.sites(stack=stack, layer=0, kind="resid_pre") + model.sites(stack=stack, kind="resid_post")
    cache = model.trace(slot_inputs(model, prompts), sites=sites, positions="last", batch_size=batch_size)
    return cache.accumulated_resid(stack)[:, :, 0].float()


@torch.no_grad()
def read_layers(unembed: Unembed, states: torch.Tensor, answer_ids: torch.Tensor, k: int,
                 rows: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per layer and prompt of ``states [layer, prompt, d]``: each answer's rank (0 = the top token; -1 where
    ``answer_ids [prompt, answer]`` is -1) and probability, and the top-k ids and probabilities; ``rows`` prompts'
    logits at a time."""
    n_layers, n, d = states.shape
    flat = states.reshape(n_layers * n, d)  # every layer's prompts as rows of one batch, read ``rows`` at a time
    ids = answer_ids.repeat(n_layers, 1)
    rank = torch.full(ids.shape, -1, dtype=torch.long)
    prob = torch.full(ids.shape, float("nan"))
    top_ids = torch.empty(len(flat), k, dtype=torch.long)
    top_probs = torch.empty(len(flat), k)
    has = ids >= 0
    for start in range(0, len(flat), rows):
        r = slice(start, start + rows)
        logits = unembed(flat[r].to(unembed.head.weight.dtype)).float()
        lse = torch.logsumexp(logits, -1, keepdim=True)
        a = logits.gather(-1, ids[r].clamp_min(0))
        rank[r] = torch.where(has[r], (logits[:, None, :] > a[:, :, None]).sum(-1), -1)
        prob[r] = torch.where(has[r], (a - lse).exp(), float("nan"))
        top = logits.topk(k, dim=-1)
        top_ids[r], top_probs[r] = top.indices, (top.values - lse).exp()
    return (rank.view(n_layers, n, -1), prob.view(n_layers, n, -1), top_ids.view(n_layers, n, k),
            top_probs.view(n_layers, n, k))


def consistency(correct: Sequence[bool] | torch.Tensor, facts: Sequence[Hashable],
                languages: Sequence[str]) -> dict[tuple[str, str], float]:
    """Per pair of languages (A, B): |C_A ∩ C_B| / |C_A ∪ C_B|, C_X = the facts answered correctly in X.

    Only facts asked in both languages count; a pair with no correct fact in either has consistency 1."""
    correct = [bool(c) for c in (correct.tolist() if isinstance(correct, torch.Tensor) else correct)]
    if not len(correct) == len(facts) == len(languages):
        raise InputError(f"{len(correct)} answers, {len(facts)} facts and {len(languages)} languages: give one of each per prompt.")
    asked: dict[str, set] = {}
    right: dict[str, set] = {}
    for c, fact, lang in zip(correct, facts, languages):
        asked.setdefault(lang, set()).add(fact)
        if c:
            right.setdefault(lang, set()).add(fact)
    out = {}
    for a, b in combinations(sorted(asked), 2):
        both = asked[a] & asked[b]
        ca, cb = right.get(a, set()) & both, right.get(b, set()) & both
        union = ca | cb
        out[(a, b)] = len(ca & cb) / len(union) if union else 1.0
    return out


def parallel_facts(languages: Sequence[str], facts: Sequence[Hashable] | None) -> list[Hashable]:
    """The fact each prompt asks: ``facts`` as given, or the prompt's index within its language (the i-th prompt of
    every language asks the same fact)."""
    if facts is not None:
        if len(facts) != len(languages):
            raise InputError(f"{len(facts)} facts for {len(languages)} prompts: give one fact id per prompt.")
        return list(facts)
    seen: dict[str, int] = {}
    out = []
    for lang in languages:
        out.append(seen.get(lang, 0))
        seen[lang] = out[-1] + 1
    if len(set(seen.values())) > 1:
        raise InputError(f"prompts per language differ ({seen}): pass facts= (one id per prompt) to say which prompts "
                         "are parallel.")
    return out
