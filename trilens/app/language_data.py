"""The Lens tab's "by language" view: prompts written one per line as ``language | prompt | answer`` (with
``| lang=answer`` for the answer in other languages), read by the language lens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..lens import language_lens

if TYPE_CHECKING:
    from ..model import Model

ZOO_FACTS_SHOWN = 12  # facts prefilled for a bilingual zoo model (each asked in both languages)


def zoo_fact_lines(n_facts: int = ZOO_FACTS_SHOWN) -> str:
    """Lines for the zoo's bilingual facts: the first ``n_facts`` facts, each in both languages (parallel by order)."""
    from ..zoo.tasks import facts

    exs = facts(0, split="test")[: 2 * n_facts]
    exs = sorted(exs, key=lambda e: e.meta["language"])  # every language's prompts in the same fact order
    return "\n".join(" | ".join([e.meta["language"], e.text, e.target]
                                + [f"{lang}={word}" for lang, word in e.meta["answers"].items() if lang != e.meta["language"]])
                     for e in exs)


def parse_queries(text: str) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """(prompts, answers per language, languages) from ``language | prompt | answer [| lang=answer ...]`` lines."""
    prompts, answers, languages = [], [], []
    for n, line in enumerate((ln for ln in text.splitlines() if ln.strip()), 1):
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or not all(parts[:3]):
            raise InputError(f"line {n} ({line.strip()!r}) should read `language | prompt | answer`, optionally "
                             "followed by `| lang=answer` for the answer in another language.")
        lang, prompt, answer = parts[:3]
        table = {lang: answer}
        for extra in parts[3:]:
            if "=" not in extra:
                raise InputError(f"line {n}: {extra!r} should be lang=answer (the answer in another language).")
            other, word = (x.strip() for x in extra.split("=", 1))
            table[other] = word
        prompts.append(prompt)
        answers.append(table)
        languages.append(lang)
    if not prompts:
        raise InputError("no prompts: write one per line as `language | prompt | answer`.")
    return prompts, answers, languages


def language_view(model: Model, text: str, k: int = 10) -> Any:
    """The language lens on the prompts of ``text`` (the i-th prompt of each language asks the same fact)."""
    prompts, answers, languages = parse_queries(text)
    return language_lens(model, prompts, answers, languages, k=k)
