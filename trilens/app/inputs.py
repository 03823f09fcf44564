"""What the user typed, checked and made into a model input: a text, or a source and a target for encoder-decoders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from ..model import Model

# Longest input (per stack) the app analyses: every attention view of a layer holds heads x tokens^2 numbers, and a
# page that sends 144 full patterns of 512 tokens to the browser (about 200 MB) stalls. Notebooks have no cap.
MAX_TOKENS = 256
GENERATED_TARGET_TOKENS = 32  # an encoder-decoder given no target reads its own greedy output


@dataclass(frozen=True)
class AppInput:
    """One input as the page holds it: ``text`` (the source of an encoder-decoder) and ``target`` ("" = none)."""

    text: str
    target: str = ""


@dataclass(frozen=True)
class Prepared:
    """An input ready for the model: what ``model.trace`` takes, the tokens per stack, and where the target came from."""

    model_input: Any
    n_tokens: dict[str, int]
    target: str
    target_generated: bool


def token_counts(model: Model, inp: AppInput) -> dict[str, int]:
    """Tokens per stack of ``inp`` (an encoder-decoder's target only where one is given)."""
    def length(batch, stack: str) -> int:
        return int(batch.masks[stack][0].sum())

    first = model.stacks[0]
    counts = {first: length(model.encode([inp.text]), first)}
    if model.family == "encoder-decoder":
        counts["decoder"] = length(model.encode([(inp.text, inp.target)]), "decoder") if inp.target else 0
    return counts


def prepare(model: Model, inp: AppInput) -> Prepared:
    """Check ``inp`` (not empty, within ``MAX_TOKENS``) and build the model input; an encoder-decoder without a target
    reads its own greedy output for the source."""
    if not inp.text.strip():
        raise InputError("the input is empty: type a text" + (" (the source)" if model.family == "encoder-decoder" else "")
                         + " in the sidebar.")
    if model.family == "encoder" and model.tokenizer is not None and model.tokenizer.mask_token is not None \
            and "[MASK]" in inp.text and model.tokenizer.mask_token != "[MASK]":
        inp = AppInput(inp.text.replace("[MASK]", model.tokenizer.mask_token), inp.target)
    counts = token_counts(model, inp)
    for stack, n in counts.items():
        if n > MAX_TOKENS:
            raise InputError(f"the {'target' if stack == 'decoder' and model.family == 'encoder-decoder' else 'text'} has "
                             f"{n} tokens; the app shows at most {MAX_TOKENS} per stack (every attention view holds "
                             "heads x tokens² numbers). Shorten it, or use trilens from a notebook for long inputs.")
    if model.family != "encoder-decoder":
        return Prepared(inp.text, counts, "", False)
    target, generated = inp.target, False
    if not target.strip():
        gen = model.generate([inp.text], max_new_tokens=GENERATED_TARGET_TOKENS)
        target, generated = gen.texts[0].strip(), True
        if not target:
            raise InputError("the model generated nothing for this source; type a target in the sidebar.")
        counts["decoder"] = token_counts(model, AppInput(inp.text, target))["decoder"]
    return Prepared((inp.text, target), counts, target, generated)


def read_position(model: Model, prep: Prepared) -> int | None:
    """Where an encoder's per-position views read the text: its mask (None: the library finds it), or the first token
    ([CLS]) where the text has no mask."""
    mask = getattr(model.tokenizer, "mask_token", None)
    return None if mask and mask in prep.model_input else 0


def new_tokens(model: Model, prep: Prepared, wanted: int) -> int:
    """How many tokens a decoder-only model may generate after the text: ``wanted``, within its context."""
    if model.family != "decoder" or model.max_length is None:
        return wanted
    room = model.max_length - prep.n_tokens["decoder"]
    if room < 1:
        raise InputError(f"the text fills this model's context of {model.max_length} tokens: there is no room to "
                         "generate. Shorten it.")
    return min(wanted, room)
