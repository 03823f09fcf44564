"""The zoo's word-level tokenizer: one vocabulary covering every task, saved with each model."""

from __future__ import annotations

from typing import Any

from .tasks import all_words, bilingual_words

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[CLS]"]


VOCABULARIES = {"tasks": all_words, "bilingual": bilingual_words}


def build_tokenizer(family: str, vocabulary: str = "tasks") -> Any:
    """A ``PreTrainedTokenizerFast`` over a task vocabulary (``"tasks"``: the four tasks'; ``"bilingual"``: the facts').

    Encoders wrap inputs as ``[CLS] ... [SEP]``; encoder-decoders end each side with ``[EOS]``;
    decoders add nothing (the LM formats add ``[EOS]`` themselves).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in VOCABULARIES[vocabulary]() if w not in SPECIALS]
    vocab = {w: i for i, w in enumerate(SPECIALS + ["[SEP]"] + [w for w in words if w != "[SEP]"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if family == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    elif family == "encoder-decoder":
        tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
        mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]", model_max_length=128,
    )
