"""Survey-derived baselines for specialising a small LLM (SmolLM2-135M): the domain-specialization access
ladder, retrieval-based generation as a kNN-LM, and (planned) KG fusion and personalization.

Importing the package registers its typed Hydra schemas (``llm_specialization.config``,
``schema/llm_specialization/...``), which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
