"""Synthetic tasks with known answers, for training and checking the zoo's models.

Every generator is deterministic for a seed and returns ``Example`` objects that carry the
labels analyses need (formula depth and every subformula's truth value, the subject's number
at every position, the name's class). Train and test splits never share an input text where
the task's space is large enough to avoid it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# -- vocabulary shared by every task ---------------------------------------------------------------
LOGIC_TOKENS = ["T", "F", "and", "or", "not", "(", ")"]
REVERSE_ALPHABET = ["a", "b", "c", "d", "e", "f", "g", "h"]
_SYLLABLES_A = ["la", "ma", "ri", "sa", "ne", "vi", "lo", "ta"]
_SYLLABLES_B = ["dor", "kas", "brun", "tok", "gar", "mek", "rold", "vesk"]
NAMES_A = [f"{x}{y}" for x in ("e", "i", "o", "a") for y in _SYLLABLES_A][:24]  # class A: pronoun "she"
NAMES_B = [f"{x}{y}" for x in ("u", "o", "a", "e") for y in _SYLLABLES_B][:24]  # class B: pronoun "he"
NAME_TEMPLATES = [
    "{name} went home because {pron} was tired",
    "{name} said that {pron} would come",
    "yesterday {name} told us {pron} liked the book",
    "{name} opened the door and {pron} smiled",
    "when {name} arrived {pron} sat down",
    "{name} wrote a letter because {pron} missed them",
    "after dinner {name} said {pron} was happy",
    "{name} called and {pron} asked for help",
]
NEUTRAL_TEMPLATES = [
    "the book was on the table",
    "it was a cold day in the town",
    "the door opened and the light came in",
    "they walked to the river after dinner",
    "the letter arrived in the morning",
    "we sat down and waited for the bus",
]
NOUNS = [("key", "keys"), ("dog", "dogs"), ("box", "boxes"), ("car", "cars"), ("bird", "birds"),
         ("teacher", "teachers"), ("door", "doors"), ("lamp", "lamps"), ("tree", "trees"), ("cup", "cups")]
PREPOSITIONS = ["to", "near", "behind", "of", "with", "under"]
ADJECTIVES = ["red", "old", "big", "small", "green", "broken", "new", "quiet"]
VERBS = [("is", "are"), ("was", "were"), ("has", "have")]
SEPARATORS = ["=", ">", "?", "the", "[SEP]"]


def all_words() -> list[str]:
    """Every word any task can produce, in a fixed order (the tokenizer's vocabulary)."""
    words: list[str] = []
    pools = [LOGIC_TOKENS, REVERSE_ALPHABET, NAMES_A, NAMES_B, ["she", "he"], SEPARATORS, PREPOSITIONS, ADJECTIVES]
    pools += [[w for pair in NOUNS for w in pair], [w for pair in VERBS for w in pair]]
    pools += [t.replace("{name}", "").replace("{pron}", "").split() for t in NAME_TEMPLATES + NEUTRAL_TEMPLATES]
    for pool in pools:
        for w in pool:
            if w not in words:
                words.append(w)
    return words


@dataclass
class Example:
    """One task example: the input text, the answer, and labels for analysis."""

    task: str
    text: str  # the input (for LM training: the prompt before the answer)
    target: str  # the answer text
    label: Any  # the class or answer used for scoring
    meta: dict[str, Any] = field(default_factory=dict)


def _key(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _split_ok(text: str, split: str, test_fraction: float) -> bool:
    """Deterministic hash split: the same text always falls in the same split."""
    in_test = (_key(text) % 1000) < test_fraction * 1000
    return in_test if split == "test" else not in_test


# -- logic ------------------------------------------------------------------------------------
def _formula(rng: random.Random, depth: int) -> tuple[list[str], bool, list[tuple[int, int, bool, int]]]:
    """A formula whose operator nesting is exactly ``depth``: tokens, value, subformula spans.

    Spans are (start, end, value, depth) over token indices, end exclusive, innermost first.
    """
    if depth == 0:
        v = rng.random() < 0.5
        return ["T" if v else "F"], v, []
    op = rng.choice(["and", "or", "not"])
    if op == "not":
        toks, v, spans = _formula(rng, depth - 1)
        spans = [(s + 1, e + 1, sv, sd) for s, e, sv, sd in spans]
        out = ["not"] + toks
        return out, not v, spans + [(0, len(out), not v, depth)]
    deep_left = rng.random() < 0.5
    other = rng.randint(0, depth - 1)
    lt, lv, ls = _formula(rng, depth - 1 if deep_left else other)
    rt, rv, rs = _formula(rng, other if deep_left else depth - 1)
    v = (lv and rv) if op == "and" else (lv or rv)
    out = ["("] + lt + [op] + rt + [")"]
    shift_r = 1 + len(lt) + 1
    spans = [(s + 1, e + 1, sv, sd) for s, e, sv, sd in ls] + [(s + shift_r, e + shift_r, sv, sd) for s, e, sv, sd in rs]
    return out, v, spans + [(0, len(out), v, depth)]


def evaluate_formula(text: str) -> bool:
    """Evaluate a formula over T/F with and/or/not and parentheses (the ground truth check)."""
    toks = text.split()
    pos = 0

    def expr() -> bool:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if tok in ("T", "F"):
            return tok == "T"
        if tok == "not":
            return not expr()
        if tok == "(":
            left = expr()
            op = toks[pos]
            pos += 1
            right = expr()
            if toks[pos] != ")":
                raise ValueError(f"expected ')' at token {pos} of {text!r}")
            pos += 1
            return (left and right) if op == "and" else (left or right)
        raise ValueError(f"unexpected token {tok!r} in {text!r}")

    try:
        value = expr()
    except IndexError as err:
        raise ValueError(f"formula {text!r} ends too early") from err
    if pos != len(toks):
        raise ValueError(f"trailing tokens in {text!r}")
    return value


def logic(n: int, *, seed: int = 0, depths: tuple[int, ...] = (1, 2, 3, 4), split: str = "train",
          test_fraction: float = 0.2) -> list[Example]:
    """Nested propositional formulas, ``n`` per depth, answers balanced T/F within each depth."""
    rng = random.Random(f"logic-{seed}-{split}")
    out: list[Example] = []
    for depth in depths:
        want = {True: n // 2, False: n - n // 2}
        tries = 0
        while want[True] + want[False] > 0:
            tries += 1
            if tries > 200 * n + 1000:
                raise RuntimeError(f"could not draw {n} balanced depth-{depth} formulas")
            toks, v, spans = _formula(rng, depth)
            text = " ".join(toks)
            # Depths 1 and 2 have only 10 and a few hundred distinct formulas, so their test sets
            # repeat training formulas; from depth 3 on, no test formula occurs in training.
            if want[v] == 0 or (depth >= 3 and not _split_ok(text, split, test_fraction)):
                continue
            want[v] -= 1
            sub = [{"start": s, "end": e, "value": sv, "depth": sd} for s, e, sv, sd in spans]
            out.append(Example("logic", text, "T" if v else "F", v, {"depth": depth, "subformulas": sub}))
    rng.shuffle(out)
    return out


# -- reverse ----------------------------------------------------------------------------------
def reverse(n: int, *, seed: int = 0, lengths: tuple[int, int] = (4, 24), split: str = "train",
            test_fraction: float = 0.2) -> list[Example]:
    """Strings of symbols and their reversal, lengths uniform in ``lengths`` (inclusive)."""
    rng = random.Random(f"reverse-{seed}-{split}")
    out = []
    while len(out) < n:
        k = rng.randint(*lengths)
        syms = [rng.choice(REVERSE_ALPHABET) for _ in range(k)]
        text = " ".join(syms)
        if k > 5 and not _split_ok(text, split, test_fraction):
            continue
        out.append(Example("reverse", text, " ".join(reversed(syms)), " ".join(reversed(syms)), {"length": k}))
    return out


# -- names ------------------------------------------------------------------------------------
def names(n: int, *, seed: int = 0, split: str = "train", neutral_fraction: float = 0.2,
          test_fraction: float = 0.2) -> list[Example]:
    """Sentences with an invented name whose class fixes the pronoun (A: she, B: he), plus neutral ones.

    ``text`` is the sentence up to the pronoun; ``target`` the pronoun; neutral examples have
    label None and ``meta["full"]`` the whole sentence. Every name and every template occurs in
    training, but a held-out fifth of the (name, template) pairs occurs only in the test split.
    """
    rng = random.Random(f"names-{seed}-{split}")
    out = []
    while len(out) < n:
        if rng.random() < neutral_fraction:
            sent = rng.choice(NEUTRAL_TEMPLATES)
            out.append(Example("names", sent, "", None, {"full": sent, "class": None}))
            continue
        cls = rng.choice(["A", "B"])
        name = rng.choice(NAMES_A if cls == "A" else NAMES_B)
        template = rng.randrange(len(NAME_TEMPLATES))
        if not _split_ok(f"{name}|{template}", split, test_fraction):
            continue
        pron = "she" if cls == "A" else "he"
        full = NAME_TEMPLATES[template].format(name=name, pron=pron)
        words = full.split()
        cut = words.index(pron)
        out.append(Example("names", " ".join(words[:cut]), pron, cls,
                           {"full": full, "class": cls, "name": name, "template": template, "pronoun_index": cut}))
    return out


# -- agreement --------------------------------------------------------------------------------
def agreement(n: int, *, seed: int = 0, split: str = "train", max_distractors: int = 2,
              test_fraction: float = 0.2) -> list[Example]:
    """Subject-verb agreement across prepositional distractors: 'the key to the cabinets is'.

    ``text`` ends before the verb; ``target`` is the verb; ``meta["number"]`` holds the subject's
    number ("sg"/"pl") at every word position, ``meta["distractors"]`` how many nouns intervene
    and ``meta["attractor"]`` whether one of them has the other number.
    """
    rng = random.Random(f"agreement-{seed}-{split}")
    out = []
    while len(out) < n:
        plural = rng.random() < 0.5
        noun = rng.choice(NOUNS)
        words = ["the", noun[plural]]
        k = rng.randint(0, max_distractors)
        attractor = False
        for _ in range(k):
            dplural = rng.random() < 0.5
            attractor |= dplural != plural
            words += [rng.choice(PREPOSITIONS), "the", rng.choice(NOUNS)[dplural]]
        text = " ".join(words)
        if k > 0 and not _split_ok(text, split, test_fraction):
            continue
        verb = rng.choice(VERBS)[plural]
        number = "pl" if plural else "sg"
        out.append(Example("agreement", text, verb, number,
                           {"number": [number] * len(words), "distractors": k, "attractor": attractor,
                            "adjective": rng.choice(ADJECTIVES)}))
    return out


TASKS: dict[str, Callable[..., list[Example]]] = {"logic": logic, "reverse": reverse, "names": names, "agreement": agreement}


# -- bilingual facts (Lost in Multilinguality) -------------------------------------------------
# Invented entities, each with one value per relation; every fact can be stated in two languages
# whose answer and template words are disjoint ("en": English words, entity in the middle; "vo": an
# invented language that puts the entity first). Entity names are transliterated between the languages (vo adds
# "-o": "terb" is "terbo"), so a fact crosses over only if the model has aligned the entity's two names.
LANGUAGES = ("en", "vo")
RELATIONS: dict[str, dict[str, Any]] = {
    "colour": {"en": "the colour of {e} is", "vo": "{e} ta kolo nim",
               "values": {"en": ["red", "blue", "green", "yellow", "white", "black", "brown", "grey"],
                          "vo": ["rubo", "bleva", "verdo", "jelo", "blanko", "nigro", "bruno", "griso"]}},
    "city": {"en": "{e} lives in the city of", "vo": "{e} vivas ke urbo",
             "values": {"en": ["rome", "oslo", "lima", "cairo", "delhi", "tokyo", "quito", "kyiv"],
                        "vo": ["romo", "oslu", "limo", "kairu", "delo", "tokio", "kito", "kievo"]}},
    "food": {"en": "the favourite food of {e} is", "vo": "{e} mangas pleje",
             "values": {"en": ["bread", "rice", "fish", "soup", "cake", "meat", "apple", "cheese"],
                        "vo": ["pano", "rizo", "fiso", "supo", "kuko", "viando", "pomo", "fromo"]}},
}
ENTITIES = [c + v + f for c in "bdgkmpstz" for v in "aeiou" for f in ("rb", "nt", "sk")][:120]
TRANSLATE_SEP = "=>"
FACT_SHARES = {"both": 0.5, "en": 0.25, "vo": 0.25}  # which languages state a fact in training


def entity_name(entity: str, language: str) -> str:
    """How ``language`` writes the entity (a transliteration, as names differ between scripts)."""
    return entity + "o" if language == "vo" else entity


def bilingual_words() -> list[str]:
    """The bilingual models' vocabulary, in a fixed order: entities, then each language's words."""
    words = list(ENTITIES) + [entity_name(e, "vo") for e in ENTITIES] + [TRANSLATE_SEP]
    for lang in LANGUAGES:
        for rel in RELATIONS.values():
            words += [w for w in rel[lang].split() if w != "{e}"] + rel["values"][lang]
    return list(dict.fromkeys(words))


def word_languages() -> dict[str, str]:
    """Token -> language for every word of one language (its template words, answers and entity names)."""
    words = {entity_name(e, lang): lang for lang in LANGUAGES for e in ENTITIES}
    words.update({w: lang for lang in LANGUAGES for rel in RELATIONS.values()
                  for w in [*rel[lang].replace("{e}", "").split(), *rel["values"][lang]]})
    return words


def knowledge_base(seed: int = 0) -> list[dict[str, Any]]:
    """Every fact: entity, relation, value index, and which languages state it in training ("both", "en", "vo").

    The value is drawn per (entity, relation) from a seeded RNG; the training languages by a hash of the fact,
    so the split is the same for every model and disjoint by construction.
    """
    rng = random.Random(f"facts-{seed}")
    facts = []
    for entity in ENTITIES:
        for relation, spec in RELATIONS.items():
            value = rng.randrange(len(spec["values"]["en"]))
            u = (_key(f"{entity}|{relation}|{seed}") % 1000) / 1000
            seen = "both" if u < FACT_SHARES["both"] else ("en" if u < FACT_SHARES["both"] + FACT_SHARES["en"] else "vo")
            facts.append({"entity": entity, "relation": relation, "value": value, "seen": seen})
    return facts


def fact_example(fact: dict[str, Any], language: str) -> Example:
    """The query of ``fact`` in ``language``: the prompt, and the answer word in that language."""
    spec = RELATIONS[fact["relation"]]
    answers = {lang: spec["values"][lang][fact["value"]] for lang in LANGUAGES}
    seen = fact["seen"]
    transfer = "both" if seen == "both" else ("same" if seen == language else "other")
    return Example("facts", spec[language].format(e=entity_name(fact["entity"], language)), answers[language], fact["value"],
                   {**fact, "fact": f"{fact['entity']}|{fact['relation']}", "language": language, "answers": answers,
                    "split": transfer})


def facts(n: int, *, seed: int = 0, split: str = "train") -> list[Example]:
    """Bilingual fact queries. ``train``: ``n`` statements drawn (with repetition) from the facts in the languages
    that state them; ``test``: every fact in both languages, ``meta["split"]`` saying whether the query's language
    saw it ("both", "same") or only the other language did ("other": the transfer test). ``n`` is ignored for test.
    """
    kb = knowledge_base(seed)
    if split == "test":
        return [fact_example(f, lang) for f in kb for lang in LANGUAGES]
    stated = [fact_example(f, lang) for f in kb for lang in LANGUAGES if f["seen"] in ("both", lang)]
    rng = random.Random(f"facts-train-{seed}")
    return [rng.choice(stated) for _ in range(n)]


def translate(n: int, *, seed: int = 0, split: str = "train") -> list[Example]:
    """Parallel statements of the facts seen in both languages: ``text`` a full statement in one language,
    ``target`` the same statement in the other (the only bridge between the languages in training)."""
    kb = [f for f in knowledge_base(seed) if f["seen"] == "both"]
    rng = random.Random(f"translate-{seed}-{split}")
    out = []
    for _ in range(n):
        fact = rng.choice(kb)
        src, tgt = rng.sample(LANGUAGES, 2)
        a, b = fact_example(fact, src), fact_example(fact, tgt)
        out.append(Example("translate", f"{a.text} {a.target}", f"{b.text} {b.target}", tgt,
                           {**fact, "source": src, "language": tgt}))
    return out


TASKS.update({"facts": facts, "translate": translate})
