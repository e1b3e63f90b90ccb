"""label_efficient_seg: one baseline per supervision type (label-efficient segmentation survey).

Importing the package registers its typed Hydra schemas (``label_efficient_seg.config``, ``schema/label_efficient_seg/...``),
which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
