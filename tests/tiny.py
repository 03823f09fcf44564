"""Tiny random models of every tested architecture, saved to disk with a word-level tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers, processors

WORDS = ("the a key keys to of cabinet cabinets is are and or not T F = ? ; ( ) > x y z one two three four five "
         "six seven eight nine ten cat dog sat on mat she he was here there big small red blue it they we you").split()
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"]
VOCAB = 100

CONFIGS = {
    "gpt2": (T.GPT2Config, dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, bos_token_id=2, eos_token_id=3), T.GPT2LMHeadModel),
    "gpt_neox": (T.GPTNeoXConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, eos_token_id=3, bos_token_id=2), T.GPTNeoXForCausalLM),
    "llama": (T.LlamaConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, eos_token_id=3, bos_token_id=2, pad_token_id=0), T.LlamaForCausalLM),
    "qwen2": (T.Qwen2Config, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, eos_token_id=3, bos_token_id=2, pad_token_id=0), T.Qwen2ForCausalLM),
    "bert": (T.BertConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, pad_token_id=0), T.BertForMaskedLM),
    "bert_headless": (T.BertConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, pad_token_id=0), T.BertModel),
    "roberta": (T.RobertaConfig, dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, max_position_embeddings=66, pad_token_id=0, bos_token_id=5, eos_token_id=6), T.RobertaForMaskedLM),
    "t5": (T.T5Config, dict(num_layers=2, num_decoder_layers=2, d_model=32, d_kv=8, num_heads=4, d_ff=64, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0), T.T5ForConditionalGeneration),
    "bart": (T.BartConfig, dict(encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=None), T.BartForConditionalGeneration),
    "marian": (T.MarianConfig, dict(encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0, forced_eos_token_id=None), T.MarianMTModel),
    "pegasus": (T.PegasusConfig, dict(encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0, forced_eos_token_id=None), T.PegasusForConditionalGeneration),
}
# Encoder-decoders whose stacks differ in depth, as distilled checkpoints do (e.g. "bart_3_2": 3 encoder, 2 decoder layers).
UNEQUAL = {f"{base}_{enc}_{dec}": (CONFIGS[base][0], {**CONFIGS[base][1], "encoder_layers": enc, "decoder_layers": dec}, CONFIGS[base][2])
           for base in ("bart", "marian", "pegasus") for enc, dec in ((3, 2), (2, 3))}
FAMILY = {"gpt2": "decoder", "gpt_neox": "decoder", "llama": "decoder", "qwen2": "decoder", "bert": "encoder",
          "bert_headless": "encoder", "roberta": "encoder", "t5": "encoder-decoder", "bart": "encoder-decoder",
          "marian": "encoder-decoder", "pegasus": "encoder-decoder", **{name: "encoder-decoder" for name in UNEQUAL}}


def make_tokenizer(family: str) -> T.PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if family == "encoder":
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 5), ("[SEP]", 6)])
    elif family == "encoder-decoder":
        tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 3)])
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
        mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]",
    )


def build(name: str, seed: int = 0):
    """A tiny random HF model of ``name`` (eager attention) and its tokenizer."""
    cfg_cls, kw, model_cls = {**CONFIGS, **UNEQUAL}[name]
    cfg = cfg_cls(vocab_size=VOCAB, **kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return model_cls(cfg).eval(), make_tokenizer(FAMILY[name])


def save(name: str, root: Path, seed: int = 0) -> Path:
    """Save the tiny model ``name`` and its tokenizer under ``root/name``; return the directory."""
    path = root / name
    if not (path / "config.json").exists():
        model, tok = build(name, seed)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path


def reference(path: Path):
    """The same checkpoint loaded as a plain HF model with eager attention (the parity reference)."""
    import json

    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    return getattr(T, arch).from_pretrained(path, attn_implementation="eager").eval()
