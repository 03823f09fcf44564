"""Lenses: what each layer 'believes' — logit lens, tuned lens, decoder lens, language lens and linear shortcut."""

from .decoder import decoder_lens, encoder_memories
from .decoder_result import DecoderLensResult
from .language import language_lens
from .language_result import LanguageLensResult
from .languages import consistency
from .logit import Lens, LogitLens, answer_slots, lens_at_answers, logit_lens, run_lens
from .result import LensResult
from .shortcut import LinearShortcut
from .shortcut_sweep import ShortcutSweepResult, shortcut_sweep
from .tuned import TunedLens
from .unembed import Unembed

__all__ = ["decoder_lens", "encoder_memories", "DecoderLensResult", "Lens", "LogitLens", "TunedLens", "Unembed", "LensResult",
           "logit_lens", "run_lens", "lens_at_answers", "answer_slots", "language_lens", "LanguageLensResult", "consistency",
           "LinearShortcut", "shortcut_sweep", "ShortcutSweepResult"]
