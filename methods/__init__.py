"""Our post-training methods; importing a module registers its method (harness.method.register_method)."""

from . import grpo, sft  # noqa: F401
from . import hint, resample  # noqa: F401  (rescue baselines; LatentRevise helper)
from .latentrevise import methods as _latentrevise  # noqa: F401  (lr-sft, lr-grpo)
