"""Attribution for generation on all three families: captum's methods per generated step, contrastive targets and
step scores."""

from .attribute import attribute
from .methods import list_attribution_methods
from .result import AttributionResult

__all__ = ["attribute", "AttributionResult", "list_attribution_methods"]
