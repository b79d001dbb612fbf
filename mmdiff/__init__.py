"""mmdiff: a multimodal diffusion toolkit.

The diffusion core (``mmdiff.core``) speaks one language: a noise level sigma and tensors of
shape [B, C, *spatial] of any rank. Models (``mmdiff.models``) and modality adapters
(``mmdiff.modalities``) plug into it; ``mmdiff.cli`` is the Hydra entry point.
"""

__version__ = "0.1.0"
