"""vocab_distill: tiny BERT students through mixed-vocabulary training and shared projections (Zhao et al.).

Importing the package registers its typed Hydra schemas (``vocab_distill.config``, ``schema/vocab_distill/...``),
which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
