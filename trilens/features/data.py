"""Two-class concept data for feature neurons: texts with one class slot, each with its factual and counterfactual
class token; held-out rows for evaluation; neutral rows (no class) that the feature should read as 0.

Where the slot is, by family: encoder-only, the one mask token in ``text``; decoder-only, the next token after
``text``; encoder-decoder, the target token after ``prefix`` (often empty) for the source ``text``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..text_files import json_lines

MASK_PLACEHOLDER = "[MASK]"  # replaced by the model's own mask token in encoder-only texts
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FeatureRow:
    """One text with a class slot. ``label`` None marks a neutral row (``factual``: the token at its slot, or None for
    the model's own prediction there)."""

    text: str
    factual: str | int | None
    counterfactual: str | int | None = None
    label: str | None = None
    prefix: str = ""
    split: str = "train"

    @property
    def neutral(self) -> bool:
        return self.label is None


@dataclass
class FeatureData:
    """Rows of a two-class concept; ``classes[0]`` (class A) is encoded as +1, ``classes[1]`` (class B) as -1."""

    rows: list[FeatureRow]
    classes: tuple[str, str]
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = list(self.rows)
        _check_rows(self.rows, self.classes)

    def select(self, split: str | None = None, label: str | None | type[Ellipsis] = ..., neutral: bool | None = None) -> list[FeatureRow]:
        """Rows of ``split`` (None: any), of class ``label`` (... : any), neutral or not (None: both)."""
        return [r for r in self.rows if (split is None or r.split == split) and (label is ... or r.label == label)
                and (neutral is None or r.neutral == neutral)]

    @property
    def train(self) -> list[FeatureRow]:
        return self.select("train", neutral=False)

    @property
    def test(self) -> list[FeatureRow]:
        return self.select("test", neutral=False)

    @property
    def neutral(self) -> list[FeatureRow]:
        return self.select(neutral=True)

    def class_tokens(self) -> dict[str, list[str | int]]:
        """Each class's factual tokens (P_A, P_B sum their probabilities)."""
        out: dict[str, list[str | int]] = {c: [] for c in self.classes}
        for r in self.rows:
            if not r.neutral and r.factual not in out[r.label]:
                out[r.label].append(r.factual)
        return out

    def sign(self, row: FeatureRow) -> float:
        """+1 for class A, -1 for class B, 0 for neutral."""
        return 0.0 if row.neutral else (1.0 if row.label == self.classes[0] else -1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "description": self.description, "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FeatureData:
        return cls([FeatureRow(**r) for r in doc["rows"]], tuple(doc["classes"]), doc.get("description", {}))

    def write_jsonl(self, path: str | os.PathLike) -> Path:
        """One JSON object per row (the format ``read_jsonl`` reads), written atomically."""
        from ..atomic import atomic_write_text

        text = "".join(json.dumps(_row_doc(r)) + "\n" for r in self.rows)
        return atomic_write_text(Path(path), text)


def _row_doc(row: FeatureRow) -> dict[str, Any]:
    doc = {"text": row.text, "factual": row.factual, "counterfactual": row.counterfactual, "class": row.label,
           "prefix": row.prefix, "split": row.split}
    return {k: v for k, v in doc.items() if v not in (None, "") or k == "class"}


def _check_rows(rows: Sequence[FeatureRow], classes: Sequence[str]) -> None:
    if len(classes) != 2 or classes[0] == classes[1]:
        raise InputError(f"a feature needs exactly two different classes, got {list(classes)}.")
    for i, r in enumerate(rows):
        if r.split not in SPLITS:
            raise InputError(f"row {i}: split must be one of {SPLITS}, not {r.split!r}.")
        if not isinstance(r.text, str) or not r.text.strip():
            raise InputError(f"row {i} has no text.")
        if r.neutral:
            continue
        if r.label not in classes:
            raise InputError(f"row {i} has class {r.label!r}; the classes are {list(classes)} (or null for a neutral row).")
        if r.factual is None or r.counterfactual is None:
            raise InputError(f"row {i} (class {r.label!r}) needs both a factual and a counterfactual token.")
        if r.factual == r.counterfactual:
            raise InputError(f"row {i}: its factual and counterfactual token are the same ({r.factual!r}).")
    for c in classes:
        for split in SPLITS:
            if not any(r.label == c and r.split == split for r in rows):
                raise InputError(f"class {c!r} has no {split} rows: every class needs rows to train on and held-out "
                                 "rows to evaluate on (a row's \"split\" is \"train\" or \"test\").")


def _held_out(key: str, fraction: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def read_jsonl(path: str | os.PathLike, *, classes: Sequence[str] | None = None, test_fraction: float = 0.2) -> FeatureData:
    """Rows from a JSON-lines file: ``{"text", "factual", "counterfactual", "class", "prefix"?, "split"?}`` per line;
    ``"class": null`` (with an optional ``factual``) marks a neutral row.

    Classes come in order of first appearance unless ``classes`` gives them (first = +1). Rows without a ``split`` are
    held out (``"test"``) for a fixed ``test_fraction`` of their texts, chosen by a hash of the text.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a file: pass a JSON-lines file with one row per line.")
    rows, seen = [], []
    for n, doc in json_lines(path, "feature rows"):
        unknown = set(doc) - {"text", "factual", "counterfactual", "class", "prefix", "split"}
        if unknown or "text" not in doc:
            raise InputError(f"{path}:{n}: a row has keys text, factual, counterfactual, class, prefix, split; "
                             f"got {sorted(doc)}.")
        label = doc.get("class")
        if label is not None:
            label = str(label)
            if label not in seen:
                seen.append(label)
        split = doc.get("split") or ("test" if _held_out(doc["text"], test_fraction) else "train")
        rows.append(FeatureRow(doc["text"], doc.get("factual"), doc.get("counterfactual"), label,
                               doc.get("prefix", "") or "", split))
    order = tuple(classes) if classes is not None else tuple(seen)
    if len(order) != 2:
        raise InputError(f"{path} has {len(order)} class(es) {list(order)}: a feature needs exactly two.")
    return FeatureData(rows, order, {"source": str(path)})


# -- built in: the zoo's tasks ---------------------------------------------------------------------------------
ZOO_TASKS = {"names": ("A", "B"), "logic": ("T", "F")}


def zoo_feature_data(family: str, task: str | None = None, *, n_train: int = 512, n_test: int = 128,
                     n_neutral: int = 64, seed: int = 0) -> FeatureData:
    """The zoo's concepts in the format a model of ``family`` was trained on.

    ``names`` (default for encoder-only and decoder-only): an invented name fixes the pronoun, class A "she", class B
    "he"; held-out rows are (name, template) pairs never seen in training. ``logic`` (default for encoder-decoders:
    zoo:t5 was not trained on names): a formula's value, class "T" or "F"; held-out rows are the task's test split.
    Neutral rows: the names task's sentences without a name (logic: the reverse task), a random word as the slot.
    """
    from ..zoo import formats, tasks

    if family not in ("encoder", "decoder", "encoder-decoder"):
        raise InputError(f"family must be encoder, decoder or encoder-decoder, not {family!r}.")
    task = task or ("logic" if family == "encoder-decoder" else "names")
    if task not in ZOO_TASKS:
        raise InputError(f"task must be one of {', '.join(ZOO_TASKS)}, not {task!r}.")
    if task == "names" and family == "encoder-decoder":
        raise InputError("the zoo's encoder-decoder was not trained on the names task: use task='logic'.")
    rng = random.Random(f"features-{task}-{seed}")
    rows: list[FeatureRow] = []
    for split, n in (("train", n_train), ("test", n_test)):
        pool = _class_examples(tasks, task, n, seed, split)
        rows += [_class_row(formats, ex, family, split) for ex in pool]
    rows += _neutral_rows(tasks, formats, family, task, n_neutral, seed, rng)
    return FeatureData(rows, ZOO_TASKS[task], {"source": f"zoo task {task}", "seed": seed})


def _class_examples(tasks: Any, task: str, n: int, seed: int, split: str) -> list[Any]:
    if task == "names":
        return tasks.names(n, seed=seed, split=split, neutral_fraction=0.0)
    return tasks.logic(max(1, n // 3), seed=seed, split=split, depths=(1, 2, 3))


def _class_row(formats: Any, ex: Any, family: str, split: str) -> FeatureRow:
    right, wrong = formats.contrast(ex)
    label = ex.label if ex.task == "names" else ("T" if ex.label else "F")
    if family == "encoder":
        text = formats.mlm_item(ex).text
    elif family == "decoder":
        text = formats.lm_item(ex).prompt
    else:
        text = formats.seq2seq_item(ex)[0]
    return FeatureRow(text, right, wrong, label, "", split)


def _neutral_rows(tasks: Any, formats: Any, family: str, task: str, n: int, seed: int, rng: random.Random) -> list[FeatureRow]:
    if n <= 0:
        return []
    if task == "logic" and family == "encoder-decoder":
        out = []
        for ex in tasks.reverse(n, seed=seed, split="test", lengths=(4, 12)):
            source, target = formats.seq2seq_item(ex)
            out.append(FeatureRow(source, target.split()[0], None, None, "", "test"))
        return out
    sentences = [ex.meta["full"] for ex in tasks.names(4 * n, seed=seed, split="test", neutral_fraction=1.0)]
    out = []
    for sent in sentences[:n]:
        words = sent.split()
        cut = rng.randrange(1, len(words))
        if family == "encoder":
            text = " ".join([*words[:cut], MASK_PLACEHOLDER, *words[cut + 1:]])
        else:
            text = " ".join(words[:cut])
        out.append(FeatureRow(text, words[cut], None, None, "", "test"))
    return out

