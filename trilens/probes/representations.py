"""What a probe reads: one vector per text (CLS / first, mean, last, a position) or per word, at every layer.

Word-level labels belong to whitespace-separated words; each word is represented by its first, last
or mean sub-word token, found through the tokenizer's character offsets. A text whose words and
labels do not line up is reported with its index and both counts, never silently skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..capture.trace import trace
from ..errors import InputError
from ..provenance import model_provenance
from .rows import ChunkedRows, RowWriter

POOLINGS = ("first", "cls", "mean", "last")
SUBWORDS = ("first", "last", "mean")


@dataclass
class Features:
    """Per stack, ``x[stack]`` ``[layer, n, d]`` (layer 0 = embeddings) for ``n`` examples with ``labels``
    — a tensor, or one ``ChunkedRows`` per layer for features kept on disk.

    ``groups[i]`` is the text example i came from — the first of identical texts, so folds never split a text
    nor put a copy of a training text in the test fold — and ``types[i]`` the word
    type (token level) or text (sentence level) that the control task keys its random labels on.
    """

    x: dict[str, torch.Tensor | list[ChunkedRows]]
    labels: np.ndarray
    groups: np.ndarray
    types: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.labels)


def same_text_groups(keys: Sequence[Any]) -> np.ndarray:
    """Per text, the index of the first text with the same key: copies of a text form one group for the folds."""
    first: dict[Any, int] = {}
    return np.asarray([first.setdefault(k, i) for i, k in enumerate(keys)], dtype=np.int64)


def check_pooling(pooling: Any) -> None:
    if not (isinstance(pooling, int) or pooling in POOLINGS):
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)} or a token position (int), not {pooling!r}.")


@dataclass
class Members:
    """Which rows each example averages: ``rows[index[j]]`` belongs to example ``owner[j]``.

    ``index`` and ``owner`` are non-decreasing (examples in text order, rows in position order), so
    the members inside any contiguous block of rows (a store shard) are one contiguous slice.
    One representation serves every pooling (first, last, a position: one member; mean: all tokens)
    and every word (its first, last or all sub-words); ``pool`` averages them in one ``index_add``.
    """

    index: torch.Tensor
    owner: torch.Tensor
    n: int

    @classmethod
    def of_texts(cls, starts: torch.Tensor, lengths: torch.Tensor, pooling: str | int) -> Members:
        """Per text (rows ``starts[i]`` .. ``starts[i] + lengths[i]``), the rows ``pooling`` reads."""
        check_pooling(pooling)
        starts, lengths = torch.as_tensor(starts, dtype=torch.long), torch.as_tensor(lengths, dtype=torch.long)
        n = len(starts)
        if pooling == "mean":
            owner = torch.repeat_interleave(torch.arange(n), lengths)
            first = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
            return cls(index=first + torch.arange(len(owner)), owner=owner, n=n)
        if pooling in ("first", "cls"):
            pos = torch.zeros_like(lengths)
        elif pooling == "last":
            pos = lengths - 1
        else:
            pos = torch.full_like(lengths, pooling) if pooling >= 0 else lengths + pooling
            bad = ((pos < 0) | (pos >= lengths)).nonzero().flatten().tolist()
            if bad:
                raise InputError(f"position {pooling} is outside text(s) {bad[:5]} (lengths {lengths[bad[:5]].tolist()} tokens).")
        return cls(index=starts + pos, owner=torch.arange(n), n=n)

    @classmethod
    def of_words(cls, picks: Sequence[Sequence[int]]) -> Members:
        """One example per word, averaging its picked rows."""
        sizes = torch.tensor([len(p) for p in picks], dtype=torch.long)
        index = torch.tensor([q for p in picks for q in p], dtype=torch.long)
        return cls(index=index, owner=torch.repeat_interleave(torch.arange(len(picks)), sizes), n=len(picks))

    def within(self, first_row: int, end_row: int) -> Members:
        """The members among rows ``first_row`` .. ``end_row`` (renumbered from there), for examples that lie there."""
        lo, hi = torch.searchsorted(self.index, torch.tensor([first_row, end_row])).tolist()
        if lo == hi:
            return Members(index=self.index[:0], owner=self.owner[:0], n=0)
        first = int(self.owner[lo])
        return Members(index=self.index[lo:hi] - first_row, owner=self.owner[lo:hi] - first, n=int(self.owner[hi - 1]) - first + 1)

    def pool(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [..., R, d]`` -> the mean of each example's member rows ``[..., n, d]``."""
        out = rows.new_zeros(*rows.shape[:-2], self.n, rows.shape[-1])
        every_row = len(self.index) == rows.shape[-2] and torch.equal(self.index, torch.arange(rows.shape[-2]))
        out.index_add_(-2, self.owner, rows if every_row else rows.index_select(-2, self.index))  # mean pooling: no copy
        counts = torch.bincount(self.owner, minlength=self.n).clamp_min(1).to(rows.dtype)
        return out / counts[:, None]


def pool_states(states: torch.Tensor, mask: torch.Tensor, pooling: str | int) -> torch.Tensor:
    """``states [layer, batch, pos, d]`` with right padding ``mask [batch, pos]`` -> ``[layer, batch, d]``."""
    batch, pos = mask.shape
    members = Members.of_texts(torch.arange(batch) * pos, mask.sum(1), pooling)
    return members.pool(states.reshape(states.shape[0], batch * pos, states.shape[-1]))


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of ``text``."""
    spans, start = [], None
    for i, ch in enumerate(text + " "):
        if ch.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    return spans


def word_tokens(tokenizer: Any, text: str, ids: Sequence[int], index: int) -> list[list[int]]:
    """Token positions of each whitespace word of ``text`` within ``ids`` (the model's own tokens of it)."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError) as err:
        raise InputError("word-level labels need a fast tokenizer (character offsets); this one has none "
                         f"({type(tokenizer).__name__}).") from err
    if list(enc["input_ids"]) != list(ids):
        raise InputError(f"text {index}: the tokenizer's ids differ from the model's input (was it truncated?); "
                         "word labels cannot be aligned.")
    spans = word_spans(text)
    out: list[list[int]] = [[] for _ in spans]
    w = 0
    for pos, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue  # special tokens carry no characters
        last = e - 1  # a token's last character is inside its word even when the token starts with a space
        while w < len(spans) and spans[w][1] <= last:
            w += 1
        if w < len(spans) and spans[w][0] <= last:
            out[w].append(pos)
    return out


def _word_rows(tokenizer: Any, text: str, ids: Sequence[int], labels: Sequence[Any], index: int, subword: str
               ) -> tuple[list[list[int]], list[Any], list[str]]:
    """(token positions per labelled word, its label, its type) for one text."""
    words = text.split()
    if len(labels) != len(words):
        raise InputError(f"text {index} has {len(words)} words (split on whitespace) but {len(labels)} labels: "
                         f"{text[:80]!r}. Give one label per word (None to skip a word).")
    per_word = word_tokens(tokenizer, text, ids, index)
    picks, ys, types = [], [], []
    for w, (positions, label) in enumerate(zip(per_word, labels)):
        if label is None:
            continue
        if not positions:
            raise InputError(f"text {index}: word {w} ({words[w]!r}) has no token in the model's input "
                             "(cut by truncation?); shorten the text or label it None.")
        picks.append(positions[:1] if subword == "first" else positions[-1:] if subword == "last" else positions)
        ys.append(label)
        types.append(words[w].lower())
    return picks, ys, types


def _check_labels(inputs: Sequence[Any], labels: Sequence[Any], level: str) -> None:
    if level not in ("sentence", "token"):
        raise InputError(f"level must be 'sentence' or 'token', not {level!r}.")
    if len(labels) != len(inputs):
        raise InputError(f"{len(labels)} labels for {len(inputs)} texts: give one label per text"
                         + (" (a list of word labels per text at token level)." if level == "token" else "."))
    if level == "token" and not all(isinstance(lab, (list, tuple, np.ndarray)) for lab in labels):
        raise InputError("token-level labels are one list of word labels per text.")


def features_from_model(model: Any, inputs: Sequence[Any], labels: Sequence[Any], *, level: str = "sentence",
                        pooling: str | int = "mean", subword: str = "first", stacks: Sequence[str] | None = None,
                        batch_size: int = 32, truncate: bool = False, progress: bool = True) -> Features:
    """Run ``model`` over ``inputs`` and keep each layer's representation of every example."""
    _check_labels(inputs, labels, level)
    check_pooling(pooling)
    if subword not in SUBWORDS:
        raise InputError(f"subword must be one of {', '.join(SUBWORDS)}, not {subword!r}.")
    stacks = list(stacks or model.stacks)
    for st in stacks:
        if st not in model.stacks:
            raise InputError(f"this {model.family} model has stacks {list(model.stacks)}, not {st!r}.")
    if "decoder" in stacks and model.family == "encoder-decoder":
        if level == "token":
            raise InputError("token-level probes read the encoder of an encoder-decoder; pass stacks=['encoder'].")
        if not all(isinstance(x, tuple) for x in inputs):
            raise InputError("the decoder stack of an encoder-decoder needs (source, target) pairs as inputs.")
    sites = [s for st in stacks for s in model.sites(stack=st, layer=0, kind="resid_pre") + model.sites(stack=st, kind="resid_post")]
    chunks: dict[str, list[torch.Tensor]] = {st: [] for st in stacks}
    ys: list[Any] = []
    groups: list[int] = []
    types: list[str] = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="features", disable=not progress, unit="batch"):
        chunk = list(inputs[start:start + batch_size])
        cache = trace(model, chunk, sites, truncate=truncate, logits=False, tokens=False)  # no LM head needed
        if level == "sentence":
            for st in stacks:
                chunks[st].append(pool_states(cache.accumulated_resid(st).float(), cache.mask(st), pooling))
            for j, x in enumerate(chunk):
                ys.append(labels[start + j])
                groups.append(start + j)
                types.append(x if isinstance(x, str) else str(x))
            continue
        st = stacks[0]  # token level reads one stack (checked above)
        states = cache.accumulated_resid(st).float()
        ids, mask = cache.ids[st], cache.mask(st)
        width = states.shape[2]
        batch_picks: list[list[int]] = []
        for j, x in enumerate(chunk):
            text = x[0] if isinstance(x, tuple) else x
            row_ids = ids[j][mask[j]].tolist()
            picks, wy, wt = _word_rows(model.tokenizer, text, row_ids, labels[start + j], start + j, subword)
            batch_picks += [[j * width + q for q in positions] for positions in picks]
            ys += wy
            types += wt
            groups += [start + j] * len(wy)
        if batch_picks:
            chunks[st].append(Members.of_words(batch_picks).pool(states.flatten(1, 2)))
    if not ys:
        raise InputError("no labelled examples: every label was None.")
    x = {st: torch.cat(v, dim=1) for st, v in chunks.items()}
    same = same_text_groups([text if isinstance(text, str) else repr(text) for text in inputs])
    return Features(x=x, labels=np.asarray(ys), groups=same[np.asarray(groups, dtype=np.int64)], types=types,
                    info=model_provenance(model, level=level, pooling=pooling if level == "sentence" else subword))


def features_from_store(store: Any, labels: Sequence[Any], *, level: str = "sentence", pooling: str | int = "mean",
                        subword: str = "first", stacks: Sequence[str] | None = None, texts: Sequence[str] | None = None,
                        tokenizer: Any = None, on_disk: bool | str | os.PathLike = False,
                        progress: bool = True) -> Features:
    """The same features from an ``ActivationStore`` of ``resid_post`` (and layer-0 ``resid_pre``) sites,
    read one shard and one layer at a time.

    Args:
        on_disk: keep the pooled (or per-word) vectors in files rather than in memory — a directory,
            or True for a temporary one removed with the ``Features`` — so the features of every layer
            may be larger than memory; the logistic probe then trains on them in chunks
            (``ChunkedRows``), other probes load one layer at a time.
    """
    _check_store_inputs(store, labels, level, pooling, texts, tokenizer)
    stacks = list(stacks or store.manifest["stacks"])
    stored_ids = {st: (store.ids(st, as_="numpy"), store.offsets(st)) for st in store.manifest["stacks"]}
    folder = None
    if on_disk:
        folder = Path(tempfile.mkdtemp(prefix="trilens-features-")) if on_disk is True else Path(on_disk)
        folder.mkdir(parents=True, exist_ok=True)
    x: dict[str, torch.Tensor | list[ChunkedRows]] = {}
    ys: list[Any] = []
    groups: list[int] = []
    types: list[str] = []
    for si, st in enumerate(stacks):
        offsets = store.offsets(st)
        if level == "sentence":
            members = Members.of_texts(torch.tensor(offsets[:-1]), torch.as_tensor(np.diff(offsets)), pooling)
        else:
            members, words = _word_members(stored_ids[st][0], offsets, texts, labels, tokenizer, subword)
            if si == 0:  # every stack labels the same words
                ys, types, groups = words
        x[st] = _read_layers(store, st, members, folder, progress)
    if level == "sentence":
        ys, groups = list(labels), list(range(store.n_texts))
        types = list(texts) if texts is not None else [f"text {i}" for i in range(store.n_texts)]
    # identical texts have identical token ids in every stack
    same = same_text_groups([b"|".join(ids[off[i]:off[i + 1]].tobytes() for ids, off in stored_ids.values())
                             for i in range(store.n_texts)])
    feat = Features(x=x, labels=np.asarray(ys), groups=same[np.asarray(groups, dtype=np.int64)], types=types,
                    info={"model": store.manifest["model"]["name"], **{k: store.manifest["model"].get(k) for k in
                                                                           ("architecture", "family", "fingerprint")},
                          "store": str(store.path), "level": level,
                          "pooling": pooling if level == "sentence" else subword, "on_disk": str(folder) if folder else None})
    if on_disk is True:
        weakref.finalize(feat, shutil.rmtree, folder, ignore_errors=True)
    return feat


def _check_store_inputs(store: Any, labels: Sequence[Any], level: str, pooling: str | int,
                        texts: Sequence[str] | None, tokenizer: Any) -> None:
    """Refuse a level, label count, pooling or set of texts that does not fit the store, before anything is read."""
    if level not in ("sentence", "token"):
        raise InputError(f"level must be 'sentence' or 'token', not {level!r}.")
    if len(labels) != store.n_texts:
        raise InputError(f"{len(labels)} labels for a store of {store.n_texts} texts: give one label per stored text.")
    if level == "token" and (texts is None or tokenizer is None):
        raise InputError("token-level probing from a store needs texts= (the stored texts) and tokenizer= to align words.")
    check_pooling(pooling)
    if texts is not None:
        from ..capture.dataset import texts_hash

        if len(texts) != store.n_texts or texts_hash(texts) != store.manifest.get("texts_sha256"):
            raise InputError(f"these {len(texts)} texts are not the ones the store at {store.path} was captured from "
                             f"({store.n_texts} texts; their fingerprint differs): pass the stored texts, in order.")


def _word_members(all_ids: np.ndarray, offsets: list[int], texts: Sequence[str], labels: Sequence[Any],
                  tokenizer: Any, subword: str) -> tuple[Members, tuple[list[Any], list[str], list[int]]]:
    """The stored token rows of every labelled word, and (labels, word types, text of each word)."""
    picks: list[list[int]] = []  # global token rows per labelled word
    ys: list[Any] = []
    types: list[str] = []
    groups: list[int] = []
    for i, text in enumerate(texts):
        p, wy, wt = _word_rows(tokenizer, text, all_ids[offsets[i]:offsets[i + 1]].tolist(), labels[i], i, subword)
        picks += [[offsets[i] + q for q in positions] for positions in p]
        ys += wy
        types += wt
        groups += [i] * len(wy)
    if not picks:
        raise InputError("no labelled examples: every word label was None.")
    return Members.of_words(picks), (ys, types, groups)


def _read_layers(store: Any, stack: str, members: Members, folder: Path | None,
                 progress: bool) -> torch.Tensor | list[ChunkedRows]:
    """Every layer's pooled rows of ``members``, read one shard at a time: ``[layer, row, d]`` in memory, or one
    ``ChunkedRows`` file per layer in ``folder``."""
    per_layer = []
    for k, name in enumerate(tqdm(_store_layers(store, stack), desc=f"read {stack}", disable=not progress, unit="layer")):
        sink = RowWriter(folder / f"{stack}-{k}.f32") if folder else []
        first_row = 0
        for shard in store.iter_shards(name):
            rows = _to_float(shard)
            here = members.within(first_row, first_row + rows.shape[0])
            if here.n:
                sink.append(here.pool(rows))
            first_row += rows.shape[0]
            del shard, rows
        per_layer.append(sink.close() if folder else torch.cat(sink))
    return per_layer if folder else torch.stack(per_layer)


def _to_float(shard: Any) -> torch.Tensor:
    return torch.as_tensor(np.array(shard, dtype=np.float32))  # a copy: the memory map is released after


def _store_layers(store: Any, stack: str) -> list[str]:
    """The store's residual sites of ``stack`` in layer order: resid_pre of layer 0, then every resid_post."""
    sites = store.sites
    post = sorted((s["layer"], n) for n, s in sites.items() if s["stack"] == stack and s["kind"] == "resid_post")
    pre0 = [n for n, s in sites.items() if s["stack"] == stack and s["kind"] == "resid_pre" and s["layer"] == 0]
    if not post or not pre0:
        raise InputError(f"probing from a store needs every layer's resid_post and layer 0's resid_pre of the {stack} "
                         "stack: capture them with sites=['resid'] (or 'resid_pre' 'resid_post').")
    return pre0 + [n for _, n in post]
