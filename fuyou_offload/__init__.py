"""fuyou_offload: fine-tuning models larger than host memory (Fuyou / LoHan / Ratel).

Importing the package registers its typed Hydra schemas (``fuyou_offload.config``,
``schema/fuyou_offload/...``), which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
