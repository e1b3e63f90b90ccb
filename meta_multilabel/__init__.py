"""meta_multilabel: learning to learn and predict for multi-label classification (Wu, Xiong & Wang, 2019).

Importing the package registers its typed Hydra schemas (``meta_multilabel.config``,
``schema/meta_multilabel/...``), which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
