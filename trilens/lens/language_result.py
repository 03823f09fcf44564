"""``LanguageLensResult``: per layer and prompt, the gold answer's rank in each language, the language of the lens's
top tokens, and the cosine between parallel prompts."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from ..results import Result, register_result
from .languages import consistency

OTHER = "other"  # top tokens that belong to no language (entities, punctuation, special tokens)


@register_result
class LanguageLensResult(Result):
    """What the logit lens reads at each prompt's answer slot, layer by layer (0 = embeddings), per language.

    ``rank [layer, prompt, answer language]`` is the gold answer's rank in that language (0 = the lens's top token;
    -1 where a prompt has no answer in that language), ``prob`` its probability; ``top_ids [layer, prompt, k]`` the
    lens's top tokens, whose languages ``share`` counts; ``cosine [layer, pair]`` compares the residual streams of
    the parallel prompts in ``pairs`` (indices into the prompts), ``baseline[(a, b)] [layer]`` that of prompts of
    different facts.
    """

    def __init__(self, *, prompts: list[str], languages: list[str], facts: list[str], answer_languages: list[str],
                 answer_ids: torch.Tensor, rank: torch.Tensor, prob: torch.Tensor, top_ids: torch.Tensor,
                 top_probs: torch.Tensor, vocab: dict[int, str], token_languages: dict[int, str],
                 pairs: list[tuple[int, int]], cosine: torch.Tensor, baseline: dict[tuple[str, str], torch.Tensor],
                 info: dict[str, Any]):
        self.prompts, self.languages, self.facts = prompts, languages, facts
        self.answer_languages, self.answer_ids = answer_languages, answer_ids
        self.rank, self.prob, self.top_ids, self.top_probs = rank, prob, top_ids, top_probs
        self.vocab, self.token_languages = vocab, token_languages
        self.pairs, self.cosine, self.baseline = pairs, cosine, baseline
        self.info = info

    @property
    def n_layers(self) -> int:
        """Lens layers: the embeddings and every block."""
        return self.rank.shape[0]

    def own_rank(self) -> torch.Tensor:
        """``[layer, prompt]``: the rank of the answer in the prompt's own language."""
        col = torch.tensor([self.answer_languages.index(lang) if lang in self.answer_languages else -1
                            for lang in self.languages])
        if bool((col < 0).any()):
            raise InputError(f"prompt {int((col < 0).nonzero()[0])} has no answer in its own language.")
        return self.rank[:, torch.arange(len(self.prompts)), col]

    def correct(self) -> torch.Tensor:
        """``[prompt]``: the model's own output (the last layer) is the answer in the prompt's language."""
        return self.own_rank()[-1] == 0

    def accuracy(self) -> dict[str, float]:
        """Share of prompts answered correctly, per prompt language."""
        ok = self.correct()
        return {lang: float(ok[[i for i, x in enumerate(self.languages) if x == lang]].float().mean())
                for lang in sorted(set(self.languages))}

    def consistency(self) -> dict[tuple[str, str], float]:
        """Per pair of languages, the overlap of the sets of facts answered correctly (METHODS.md)."""
        return consistency(self.correct(), self.facts, self.languages)

    def share(self) -> tuple[list[str], torch.Tensor]:
        """(languages + ``"other"``, ``[layer, prompt, language]``): the share of the top-k lens tokens in each."""
        names = sorted(set(self.token_languages.values())) + [OTHER]
        code = {i: names.index(self.token_languages.get(i, OTHER)) for i in self.top_ids.unique().tolist()}
        lut = torch.full((int(self.top_ids.max()) + 1,), len(names) - 1)
        for i, c in code.items():
            lut[i] = c
        onehot = torch.nn.functional.one_hot(lut[self.top_ids], len(names)).float()
        return names, onehot.mean(-2)

    def settled_layer(self) -> torch.Tensor:
        """``[prompt]``: the first layer from which the own-language answer stays the lens's top token (-1: never)."""
        from .result import settled_layer

        return settled_layer(self.own_rank() == 0)

    # -- the result contract -------------------------------------------------------------------
    def to_frame(self):
        """One row per (layer, prompt, answer language): rank, probability, the prompt's language and fact, and
        whether the answer language is the prompt's own."""
        import pandas as pd

        n_layers, n, n_lang = self.rank.shape
        layer, prompt, alang = torch.meshgrid(torch.arange(n_layers), torch.arange(n), torch.arange(n_lang), indexing="ij")
        p, a = prompt.flatten().tolist(), alang.flatten().tolist()
        frame = pd.DataFrame({
            "layer": layer.flatten().numpy(), "prompt": p,
            "language": [self.languages[i] for i in p], "fact": [self.facts[i] for i in p],
            "answer_language": [self.answer_languages[j] for j in a],
            "rank": self.rank.flatten().numpy(), "prob": self.prob.flatten().numpy()})
        frame["own_language"] = frame["language"] == frame["answer_language"]
        return frame[frame["rank"] >= 0].reset_index(drop=True)

    def layer_frame(self):
        """One row per (layer, prompt language): median answer rank in each answer language, the top-k share of each
        language, and the mean parallel and baseline cosines."""
        import pandas as pd

        names, share = self.share()
        rows = []
        for lang in sorted(set(self.languages)):
            idx = [i for i, x in enumerate(self.languages) if x == lang]
            for layer in range(self.n_layers):
                row: dict[str, Any] = {"layer": layer, "language": lang}
                for j, alang in enumerate(self.answer_languages):
                    r = self.rank[layer, idx, j]
                    r = r[r >= 0]
                    row[f"rank_{alang}"] = float(r.float().median()) if len(r) else float("nan")
                    row[f"top1_{alang}"] = float((r == 0).float().mean()) if len(r) else float("nan")
                for j, name in enumerate(names):
                    row[f"share_{name}"] = float(share[layer, idx, j].mean())
                rows.append(row)
        frame = pd.DataFrame(rows)
        if self.pairs:
            frame["cosine_parallel"] = [float(self.cosine[layer].mean()) for layer in frame["layer"]]
        for (a, b), v in self.baseline.items():
            frame[f"cosine_other_{a}_{b}"] = [float(v[layer]) for layer in frame["layer"]]
        return frame

    def figure(self, kind: str = "rank"):
        """``"rank"``: median rank of the answer in each language per layer, per prompt language (log scale);
        ``"share"``: the language share of the top-k lens tokens; ``"cosine"``: parallel vs other prompts."""
        from ..viz import curves

        frame = self.layer_frame()
        x = list(range(self.n_layers))
        if kind == "rank":
            series, dash = {}, {}
            for lang in sorted(set(self.languages)):
                for alang in self.answer_languages:
                    name = f"{lang} prompts, {alang} answer"
                    series[name] = frame[frame.language == lang][f"rank_{alang}"].to_numpy() + 1
                    if alang != lang:  # the answer in another language than the prompt's: dotted
                        dash[name] = "dot"
            return curves(x, series, dash=dash, log_y=True, title="gold answer's rank per layer (1 = top)",
                          y_title="median rank + 1")
        if kind == "share":
            names, _ = self.share()
            series = {f"{lang} prompts: {name}": frame[frame.language == lang][f"share_{name}"].to_numpy()
                      for lang in sorted(set(self.languages)) for name in names}
            return curves(x, series, title=f"language of the top-{self.top_ids.shape[-1]} lens tokens", y_title="share")
        if kind == "cosine":
            if not self.pairs:
                raise InputError("no parallel prompts (one fact in two languages): there is no cosine to draw.")
            series = {"parallel prompts": self.cosine.mean(1).numpy()}
            series.update({f"other facts ({a}, {b})": v.numpy() for (a, b), v in self.baseline.items()})
            return curves(x, series, title="cosine of the answer slot's residual stream", y_title="cosine")
        raise InputError(f"unknown figure kind {kind!r}: choose 'rank', 'share' or 'cosine'.")

    def __repr__(self) -> str:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in self.accuracy().items()) if set(self.languages) <= set(self.answer_languages) else ""
        return f"LanguageLensResult: {len(self.prompts)} prompts, {self.n_layers} layers, accuracy {acc}"

    def _state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        data = {"prompts": self.prompts, "languages": self.languages, "facts": self.facts,
                "answer_languages": self.answer_languages, "vocab": {str(k): v for k, v in self.vocab.items()},
                "token_languages": {str(k): v for k, v in self.token_languages.items()},
                "pairs": [list(p) for p in self.pairs], "baseline_pairs": [list(k) for k in self.baseline]}
        tensors = {"answer_ids": self.answer_ids, "rank": self.rank, "prob": self.prob, "top_ids": self.top_ids,
                   "top_probs": self.top_probs, "cosine": self.cosine}
        tensors.update({f"baseline_{i}": v for i, v in enumerate(self.baseline.values())})
        return data, tensors

    @classmethod
    def _from_state(cls, data: dict[str, Any], tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> LanguageLensResult:
        return cls(prompts=data["prompts"], languages=data["languages"], facts=data["facts"],
                   answer_languages=data["answer_languages"], answer_ids=tensors["answer_ids"], rank=tensors["rank"],
                   prob=tensors["prob"], top_ids=tensors["top_ids"], top_probs=tensors["top_probs"],
                   vocab={int(k): v for k, v in data["vocab"].items()},
                   token_languages={int(k): v for k, v in data["token_languages"].items()},
                   pairs=[tuple(p) for p in data["pairs"]], cosine=tensors["cosine"],
                   baseline={tuple(k): tensors[f"baseline_{i}"] for i, k in enumerate(data["baseline_pairs"])}, info=info)
