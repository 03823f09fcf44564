"""Attention analysis on all three families: degeneration over generation steps (attention mass and source
sensitivity), rollout, flow and relevancy."""

from .steps import attention_steps
from .steps_result import AttentionStepsResult

__all__ = ["attention_steps", "AttentionStepsResult"]
