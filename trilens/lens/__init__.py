"""Lenses: what each layer 'believes' — logit lens, tuned lens, decoder lens."""

from .decoder import decoder_lens, encoder_memories
from .decoder_result import DecoderLensResult
from .logit import Lens, LogitLens, lens_at_answers, logit_lens, run_lens
from .result import LensResult
from .tuned import TunedLens
from .unembed import Unembed

__all__ = ["decoder_lens", "encoder_memories", "DecoderLensResult", "Lens", "LogitLens", "TunedLens", "Unembed", "LensResult", "logit_lens", "run_lens", "lens_at_answers"]
