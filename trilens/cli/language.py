"""``trilens lens language`` and ``trilens lens shortcut fit|eval|sweep``: the language lens and the linear shortcut
(Lost in Multilinguality) on the zoo's bilingual facts or on a user's own prompts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from .model_args import add_model, load_model


def _fmt(value: float) -> str:
    return f"{value:.3f}"


@dataclass
class Queries:
    """Prompts with each one's answers (language -> word), language, fact and group."""

    prompts: list[str]
    answers: list[dict[str, str]]
    languages: list[str]
    facts: list[str]
    groups: list[str] | None

    def head(self, n: int) -> Queries:
        """The first ``n`` prompts."""
        return Queries(self.prompts[:n], self.answers[:n], self.languages[:n], self.facts[:n],
                       self.groups[:n] if self.groups else None)

    def own_answers(self) -> list[str]:
        return [a[lang] for a, lang in zip(self.answers, self.languages)]

    def fitting(self, n: int) -> tuple[list[str], list[str]]:
        """``n`` prompts to fit a shortcut on, and their answers: the first of the facts seen in every language where
        groups say so, else the first ``n``."""
        pool = [i for i, g in enumerate(self.groups or []) if g == "both"] or list(range(len(self.prompts)))
        own = self.own_answers()
        return [self.prompts[i] for i in pool[:n]], [own[i] for i in pool[:n]]


def _zoo_queries() -> Queries:
    from ..zoo.tasks import facts

    exs = facts(0, split="test")
    return Queries([ex.text for ex in exs], [ex.meta["answers"] for ex in exs], [ex.meta["language"] for ex in exs],
                   [ex.meta["fact"] for ex in exs], [ex.meta["split"] for ex in exs])


def read_queries(args: argparse.Namespace, model: Any) -> Queries:
    """The zoo's bilingual facts (a bilingual zoo model and no ``--data``), or the columns of ``--data``."""
    if args.data is None:
        if not (args.model.startswith("zoo:") and model.language_map is not None):
            raise InputError("pass --data FILE (JSON lines, CSV, Parquet or a datasets folder) with columns prompt, "
                             "language and answer (answer_<language> for the answer in other languages; fact and group "
                             "optional); only the zoo's bilingual models bring their own facts.")
        queries = _zoo_queries()
    else:
        from ..sources import read_columns

        values = read_columns(Path(args.data), [args.prompt_column, args.language_column], split=args.split,
                              also=lambda c: c.startswith("answer_") or c in (args.answer_column, "fact", "group"))
        extra = [c for c in values if c.startswith("answer_")]
        languages = [str(x) for x in values[args.language_column]]
        answers = [{c.removeprefix("answer_"): values[c][i] for c in extra if values[c][i]} for i in range(len(languages))]
        if args.answer_column in values:
            for a, lang, own in zip(answers, languages, values[args.answer_column]):
                a[lang] = own
        facts = [str(f) for f in values["fact"]] if "fact" in values else None
        if facts is None:
            from ..lens.languages import parallel_facts

            facts = [str(f) for f in parallel_facts(languages, None)]
        queries = Queries(list(values[args.prompt_column]), answers, languages, facts,
                          [str(g) for g in values["group"]] if "group" in values else None)
    return queries.head(args.limit) if args.limit else queries


def _print_accuracy(result: Any) -> None:
    acc = ", ".join(f"{lang} {v:.3f}" for lang, v in result.accuracy().items())
    cons = ", ".join(f"{a}-{b} {v:.3f}" for (a, b), v in result.consistency().items())
    print(f"model accuracy: {acc}; consistency: {cons or '-'}")


def cmd_lens_language(args: argparse.Namespace) -> int:
    from ..lens import language_lens
    from ..loading import read_language_map

    model = load_model(args)
    q = read_queries(args, model)
    result = language_lens(model, q.prompts, q.answers, q.languages, facts=q.facts, k=args.k,
                           language_map=read_language_map(args.language_map) if args.language_map else None)
    print(f"language lens — {model.name}: {len(q.prompts)} prompts; per layer (0 = embeddings) and prompt language: "
          f"the gold answer's median rank in each language, the language share of the top-{args.k} lens tokens, "
          "and the cosine of parallel prompts (vs other facts)\n")
    print(result.layer_frame().to_string(index=False, float_format=_fmt))
    print()
    _print_accuracy(result)
    if args.out:
        print(f"saved to {result.save(args.out, figure=True)}")
    return 0


def _beta(text: str) -> float | str:
    if text == "fit":
        return text
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--beta takes a number or 'fit', not {text!r}") from err


def _sweep_tables(result: Any) -> None:
    frame = result.to_frame()
    table = frame.pivot_table(index="layer", columns=["language", "group"], values="accuracy")
    print("shortcut accuracy per layer, language and group (the full model's in the last row):")
    model_row = frame.drop_duplicates(["language", "group"]).set_index(["language", "group"])["model_accuracy"]
    table.loc["model"] = model_row.reindex(table.columns).to_numpy()
    print(table.to_string(float_format=_fmt))
    cons = result.consistency_frame()
    print("\nconsistency per layer:")
    print(cons.pivot_table(index="layer", columns="pair", values="consistency", sort=False).to_string(float_format=_fmt))


def cmd_lens_shortcut(args: argparse.Namespace) -> int:
    from ..lens import LinearShortcut, shortcut_sweep

    model = load_model(args)
    q = read_queries(args, model)
    if args.action == "fit":
        if args.layer is None or args.out is None:
            raise InputError("shortcut fit needs --layer L (the layer to start from) and --out DIR (where to save it).")
        fit, fit_answers = q.fitting(args.fit)
        sc = LinearShortcut.fit(model, fit, layer=args.layer, beta=args.beta, answers=fit_answers)
        print(sc.summary())
        print(f"saved to {sc.save(args.out)}")
        return 0
    if args.action == "eval":
        if args.shortcut is None:
            raise InputError("shortcut eval needs --shortcut DIR (a shortcut saved by `trilens lens shortcut fit`).")
        result = shortcut_sweep(model, None, q.prompts, q.own_answers(), q.languages, facts=q.facts, groups=q.groups,
                                shortcuts=[LinearShortcut.load(args.shortcut)])
    else:
        fit, fit_answers = q.fitting(args.fit)
        result = shortcut_sweep(model, fit, q.prompts, q.own_answers(), q.languages, facts=q.facts, groups=q.groups,
                                layers=args.layers, beta=args.beta, fit_answers=fit_answers)
    print(f"linear shortcut — {model.name}: {len(q.prompts)} prompts\n")
    _sweep_tables(result)
    if args.out and args.action != "fit":
        print(f"\nsaved to {result.save(args.out, figure=True)}")
    return 0


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="prompts with columns prompt, language, answer (answer_<lang>, fact, "
                   "group optional): JSON lines, CSV, Parquet or a datasets folder; default: a zoo model's own facts")
    p.add_argument("--split", default=None, help="the split of a datasets folder")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--language-column", default="language")
    p.add_argument("--answer-column", default="answer")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")


def add_parsers(lens: Any) -> None:
    """``language`` and ``shortcut`` under ``trilens lens``."""
    p = lens.add_parser("language", help="the language lens: answer rank per language, language of the lens's tokens")
    add_model(p)
    _data_arguments(p)
    p.add_argument("--k", type=int, default=10, help="top tokens whose language is counted")
    p.add_argument("--language-map", type=Path, default=None, help="JSON object token -> language (default: the "
                   "model folder's languages.json)")
    p.add_argument("--out", type=Path, default=None, help="save the result (and its figure) to this folder")
    p.set_defaults(func=cmd_lens_language)
    p = lens.add_parser("shortcut", help="the linear shortcut from a middle layer to the output: fit, eval or sweep")
    p.add_argument("action", choices=["fit", "eval", "sweep"])
    add_model(p)
    _data_arguments(p)
    p.add_argument("--layer", type=int, default=None, help="fit: the layer the shortcut starts from")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="sweep: layers to try (default: all)")
    p.add_argument("--fit", type=int, default=25, help="fitting prompts (the first N; of facts seen in both "
                   "languages where the data has groups)")
    p.add_argument("--beta", type=_beta, default=2.25, help="the scale of W h (the paper's 2.25), or 'fit'")
    p.add_argument("--shortcut", type=Path, default=None, help="eval: a saved shortcut")
    p.add_argument("--out", type=Path, default=None, help="fit: where to save the shortcut; eval/sweep: the result")
    p.set_defaults(func=cmd_lens_shortcut)
