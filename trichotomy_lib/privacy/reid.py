"""Re-identification verifiers (Packhäuser et al. 2022), one import for the public API.

* ``reid_model``  — ``Verifier`` (siamese network: embed once, score on embeddings), save/load.
* ``reid_score``  — head on embeddings: ``score_pairs``, ``score_matrix``, ``max_score``,
  ``topk_nearest``, ``retrieve_then_verify``.
* ``reid_train``  — ``REID_DEFAULTS``, ``sample_pairs``, ``train_verifier``.
* ``reid_eval``   — verification metrics with CIs, precision@1, raw-pixel baseline.

The pipeline stages (``reid_defender``, ``reid_auditor``) and ``load_verifier(pipe, role)``
live in ``trichotomy_lib.stages.reid``.
"""

from .reid_eval import (  # noqa: F401
    Evaluation,
    evaluate_pixels,
    evaluate_verifier,
    hardest_pairs,
    pixel_scores,
    precision_at_1,
    verification_metrics,
)
from .reid_model import MODEL_DEFAULTS, Verifier, build_resnet50  # noqa: F401
from .reid_score import (  # noqa: F401
    Retrieval,
    max_score,
    retrieve_then_verify,
    score_matrix,
    score_pairs,
    topk_nearest,
)
from .reid_train import (  # noqa: F401
    REID_DEFAULTS,
    TRAIN_KEYS,
    Pairs,
    augment,
    sample_pairs,
    train_verifier,
)
