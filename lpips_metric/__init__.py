"""lpips_metric: LPIPS, its calibration and its 2AFC/JND evaluation (Zhang et al., CVPR 2018).

Importing the package registers its typed Hydra schemas (``lpips_metric.config``, ``schema/lpips_metric/...``),
which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
