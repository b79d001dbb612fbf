"""Evaluation: sample-quality metrics (Fréchet distance, KID, precision/recall, spectral distances) in
the feature space of a small domain classifier that mmdiff trains itself on the reference data, with
the real-vs-real floor beside every number. Nothing downloads weights: every metric works offline.

- ``metrics``:   pure functions on feature arrays and waveforms
- ``evaluator``: the domain classifier (images, or log-mel spectrograms of audio), trained and cached
- ``evaluate``:  every metric for a kind of data, its floor, the table and ``mode=eval``
- ``inception``: optional Inception FID, from a weights file the user supplies
"""

# (the function evaluate stays in mmdiff.eval.evaluate: re-exporting it would hide that module)
from .evaluate import evaluate_reconstructions, split_halves
from .evaluator import Evaluator, load_or_train_evaluator, train_evaluator
from .metrics import fd, kid, precision_recall

__all__ = ["Evaluator", "evaluate_reconstructions", "fd", "kid", "load_or_train_evaluator",
           "precision_recall", "split_halves", "train_evaluator"]
