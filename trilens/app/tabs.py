"""The page's tabs, in order: each a title and the panel that draws it, from one ``View`` (the model's source, the
input in the sidebar and the loaded model). A new analysis adds its tab here, and nowhere else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .inputs import AppInput
from .panels.attention import attention_panel
from .panels.attribution import attribution_panel
from .panels.compare import compare_panel
from .panels.decoder_lens import decoder_lens_panel
from .panels.features import features_panel
from .panels.lens import lens_panel
from .panels.patching import patching_panel
from .panels.probes import probes_panel
from .panels.steps import steps_panel
from .panels.tokens import tokens_panel


@dataclass(frozen=True)
class View:
    """What every tab is drawn for: the model's source (zoo name or folder), the input, the loaded model."""

    source: str
    inp: AppInput
    model: Any

    @property
    def family(self) -> str:
        return self.model.family


@dataclass(frozen=True)
class Tab:
    title: str
    draw: Callable[[View], None]


TABS = (
    Tab("Tokens & prediction", lambda v: tokens_panel(v.source, v.inp, v.family)),
    Tab("Attention", lambda v: attention_panel(v.source, v.inp)),
    Tab("Attention over steps", lambda v: steps_panel(v.source, v.inp, v.family)),
    Tab("Attribution", lambda v: attribution_panel(v.source, v.inp, v.family)),
    Tab("Patching", lambda v: patching_panel(v.source, v.inp, v.family)),
    Tab("Feature neurons", lambda v: features_panel(v.source, v.inp, v.family)),
    Tab("Lens", lambda v: lens_panel(v.source, v.inp, v.family, v.model.language_map is not None)),
    Tab("Decoder lens", lambda v: decoder_lens_panel(v.source, v.inp, v.family)),
    Tab("Probes", lambda v: probes_panel(v.source)),
    Tab("Compare", lambda v: compare_panel(v.source, v.inp, v.family)),
)
TITLES = tuple(tab.title for tab in TABS)
