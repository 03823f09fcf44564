"""``python -m trilens.demo`` (``make demo``): the zoo's three trained models, and what their layers believe.

For each family it loads the shipped model offline, says what it is and how good it is (its model
card), and shows one view of its internals: the answer's probability per layer for a logic formula
(logit lens on zoo:gpt and zoo:bert) and the input tokens its log-probability is most sensitive to (gradients),
and what the decoder outputs when it reads each encoder layer of zoo:t5 (decoder lens). The same views, as figures,
go to one page that opens offline (``trilens-demo.html`` by default; its path is printed last).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

REPORT = Path("trilens-demo.html")


REVERSE = "a b c d e f g h"


def _held_out_formula() -> tuple[str, str]:
    """A depth-3 formula none of the models saw in training, and its answer."""
    from .zoo import tasks as T

    ex = T.logic(1, seed=0, depths=(3,), split="test")[0]
    return ex.text, ex.target


def _card_line(name: str) -> str:
    from .zoo import MODELS_DIR

    card = json.loads((MODELS_DIR / name / "card.json").read_text())
    m = card["metrics"]
    parts = [f"logic depth {k.rsplit('_', 1)[1]} {v:.2f}" for k, v in m.items() if k.startswith("logic_depth_")]
    parts += [f"{k} {m[k]:.2f}" for k in ("reverse_up_to_12", "names", "agreement") if k in m]
    return f"held-out accuracy: {', '.join(parts)} (trained here in {card['train_seconds'] / 60:.0f} min)"


def _answer_per_layer(model: Any, text: str, answer: str, out: TextIO) -> list[tuple[str, Any]]:
    """Logit lens at the answer's slot: the answer's probability and the top token of every layer (one lens run,
    printed at the slot and drawn at every position)."""
    from .lens import answer_slots, run_lens

    targets, pos = answer_slots(model, [text], [answer])
    res = run_lens(model, [text], targets=targets)
    at = res.at(pos)
    probs = (-at["cross_entropy"][:, 0]).exp().tolist()
    tops = [res.token(i) for i in at["top_id"][:, 0].tolist()]
    print(f"  {text!r} -> {answer}: logit lens at the answer's slot", file=out)
    print("    layer  " + "".join(f"{k:>7}" for k in range(len(probs))), file=out)
    print(f"    p({answer})   " + "".join(f"{p:>7.2f}" for p in probs), file=out)
    print("    top-1  " + "".join(f"{t:>7}" for t in tops), file=out)
    settled = int(at["settled"][0])
    print(f"    the answer is top-1 from layer {settled} on" if settled >= 0 else "    the model gets it wrong", file=out)
    _salient_tokens(model, text, answer, out)
    return [(f"Logit lens on {text!r}: every layer's top token and its probability at every position", res.figure())]


def _salient_tokens(model: Any, text: str, answer: str, out: TextIO) -> None:
    """Which input tokens the answer's log-probability is most sensitive to (gradient norm at the token embeddings)."""
    from .capture.objectives import TokenScore

    res = model.gradients([text], TokenScore(token=answer, position="mask" if model.family == "encoder" else -1))
    scores = res.saliency()[0, 0]
    tokens = res.tokens()[0]
    top = scores.argsort(descending=True)[:3].tolist()
    print(f"    d log p({answer}) / d token embeddings is largest at: "
          + ", ".join(f"{i}:{tokens[i]} ({float(scores[i]):.2f})" for i in top), file=out)


def _decoder_lens_view(model: Any, formula: str, answer: str, out: TextIO) -> list[tuple[str, Any]]:
    from .lens import decoder_lens

    res = decoder_lens(model, [f"{formula} =", f"{REVERSE} >"], references=[answer, " ".join(reversed(REVERSE.split()))],
                       max_new_tokens=12)
    print("  decoder lens: what the decoder outputs when it reads encoder layer k (0 = embeddings)", file=out)
    for i, src in enumerate(res.sources):
        print(f"    {src!r}  (expected: {res.references[i]})", file=out)
        for k, outs in enumerate(res.outputs):
            print(f"      layer {k}: {outs[i]}", file=out)
    return [("Decoder lens: the decoder's output when it reads encoder layer k, scored against the answer (exact "
             "match, per source)", res.figure())]


def main(out: TextIO = sys.stdout, report: str | Path | None = REPORT) -> int:
    import trilens
    from .errors import ModelLoadError
    from .viz.page import Section, write_page

    start = time.perf_counter()
    formula, answer = _held_out_formula()
    views = {"gpt": lambda m: _answer_per_layer(m, f"{formula} =", answer, out),
             "bert": lambda m: _answer_per_layer(m, f"{formula} = [MASK]", answer, out),
             "t5": lambda m: _decoder_lens_view(m, formula, answer, out)}
    missing, sections = [], []
    for name, view in views.items():
        try:
            model = trilens.load(f"zoo:{name}")
        except ModelLoadError as err:
            missing.append(name)
            print(f"zoo:{name}: {err}\n", file=out)
            continue
        stacks = ", ".join(f"{s} {n} layers" for s, n in model.n_layers.items())
        print(f"zoo:{name} — {model.architecture} ({model.family}; {stacks}; d_model {model.d_model})", file=out)
        print(f"  {_card_line(name)}", file=out)
        figures = view(model)
        print(file=out)
        section = Section(f"zoo:{name} — {model.architecture}", name)
        section.text(f"{model.family}; {stacks}; d_model {model.d_model}. {_card_line(name)}.")
        for caption, fig in figures:
            section.figure(caption, fig)
        sections.append(section)
    print(f"Done in {time.perf_counter() - start:.1f} s. Next: the tutorials in docs/tutorials/, "
          "`trilens study run all` (every study and one report).", file=out)
    if report is not None and sections:
        path = write_page(report, "trilens demo: what the zoo's layers believe", sections,
                          [f"A depth-3 logic formula none of the models saw in training: {formula} = {answer}."])
        print(f"report: {path.resolve()}", file=out)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
