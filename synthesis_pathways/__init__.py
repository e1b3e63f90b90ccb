"""synthesis_pathways: SynNet (Gao, Mercado, Coley, ICLR 2022) on a CPU.

Importing the package registers its typed Hydra schemas (``synthesis_pathways.config``,
``schema/synthesis_pathways/...``), which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
