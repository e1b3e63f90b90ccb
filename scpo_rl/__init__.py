"""SCPO (state-conservative policy optimization, Kuang et al. AAAI 2022) and SAC baselines on MuJoCo.

Library layout (importable without Hydra):
- ``model``: tanh-Gaussian actor, Q networks, the PR-SAC adversary.
- ``algorithm``: ``Agent`` (SAC / SC-SAC / PR-SAC updates), ``state_conservative_value`` (the penalty).
- ``replay``: the replay buffer (checkpointable).
- ``envs``: env construction, fixed state normalization, mass/friction perturbation, domain randomization,
  exact env-state capture for resume.
- ``loop``: the training loop (checkpoint/resume, logging, nominal evaluation).
- ``evaluate``: deterministic evaluation, robustness grids, confidence intervals, plots.

Importing the package registers its typed Hydra schemas (``scpo_rl.config``, ``schema/scpo_rl/...``),
which ``conf/`` needs to compose.
"""

from . import config as _config  # noqa: F401
