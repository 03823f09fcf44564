"""Attention analysis on all three families: degeneration over generation steps (attention mass and source
sensitivity), rollout, flow and relevancy."""

from .flow import attention_flow
from .maps import relevancy_maps
from .maps_result import RelevancyResult
from .rollout import encoder_decoder_rollout, rollout
from .steps import attention_steps
from .steps_result import AttentionStepsResult

__all__ = ["attention_steps", "AttentionStepsResult", "relevancy_maps", "RelevancyResult", "rollout",
           "encoder_decoder_rollout", "attention_flow"]
