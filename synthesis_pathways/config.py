"""Typed configs of the Hydra shells (``conf/config.yaml`` for training, ``conf/optimize.yaml`` for the GA):
the groups ``data``, ``model`` and ``sampling``, the root keys, and the two composed configs
(:class:`SynthesisConfig`, :class:`OptimizeConfig`), registered as ``schema/synthesis_pathways/...``.

The training shell merges the three groups into the library's flat
:class:`synthesis_pathways.pipeline.PipelineConfig`; the GA takes :class:`GAConfig` as it is. No torch or
RDKit import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import auto

from omegaconf import MISSING

from common.schema import AppConfig, Choice, RootConfig, register


class Network(Choice):
    """SynNet's four networks."""

    act = auto()
    """Action: add, expand, merge or end."""
    rt1 = auto()
    """First reactant (a k-NN query in block-embedding space)."""
    rxn = auto()
    """Reaction template."""
    rt2 = auto()
    """Second reactant."""


class Stage(Choice):
    sample = auto()
    """Sample synthetic trees."""
    featurize = auto()
    """Turn them into the networks' training rows."""
    fit = auto()
    """Fit the networks."""


class Objective(Choice):
    """The GA's offline objectives (``synthesis_pathways.oracles.ORACLES``)."""

    qed = auto()
    plogp = auto()
    celecoxib_similarity = auto()
    troglitazone_similarity = auto()
    druglike_mpo = auto()


class Policy(Choice):
    model = auto()
    """Decode with the trained networks."""
    random = auto()
    """Random decisions (the baseline without a trained model)."""


@dataclass
class DataConfig:
    """The ``data`` group: templates and the building-block pool."""

    templates: str = "hb"
    """Template file or dataset key (hb, synformer): one reaction SMARTS a line."""
    blocks: str = "enamine_1913"
    """Building-block file (.smi/.txt/.csv/.sdf[.gz]) or dataset key (enamine_1913, wuxi)."""
    blocks_column: str | None = None
    """SMILES column of a CSV pool (null: smiles)."""
    filter_blocks: bool = True
    """Keep only blocks that match some template slot (the reference's BuildingBlockFilter); false: every block."""


@dataclass
class ModelConfig:
    """The ``model`` group: fingerprints and the four MLPs."""

    nbits: int = 4096
    """State fingerprint bits (paper: 4096)."""
    radius: int = 2
    """Morgan radius."""
    emb_bits: int = 256
    """k-NN block embedding bits (paper: 256)."""
    hidden: dict[str, int] = field(default_factory=lambda: {"act": 1000, "rt1": 1200, "rxn": 3000, "rt2": 3000})
    """Hidden width of each network (act, rt1, rxn, rt2)."""
    num_layers: int = 5
    """Linear layers per network."""
    dropout: float = 0.5
    """Dropout (one layer, as the reference)."""
    lr: float = 1e-4
    """Adam learning rate (used when lr_grid is empty)."""
    lr_grid: list[float] = field(default_factory=list)
    """Learning rates tried per network, each trained to early stopping from the same initial weights; the
    best on validation (MRR for rt1/rt2, accuracy for act/rxn) is kept. Empty: lr only."""
    min_epochs: int = 0
    """Epochs before early stopping may stop a net (the best checkpoint is tracked from the first epoch): rt1's
    k-NN rank can sit at chance for tens of epochs before it rises."""

    def __post_init__(self):
        unknown = sorted(set(self.hidden) - {n.name for n in Network})
        if unknown:
            raise ValueError(f"model.hidden: unknown network(s) {unknown}; expected act, rt1, rxn, rt2")


@dataclass
class SamplingConfig:
    """The ``sampling`` group: the synthetic trees."""

    attempts: int = 2000
    """Sampling attempts (failed trees and the QED filter drop some)."""
    shard_size: int = 250
    """Attempts per seeded shard: the unit of parallelism and of resume."""
    workers: int = 1
    """Sampling processes (the sampled trees do not depend on it)."""
    max_steps: int = 15
    """Reaction steps per tree at most."""
    qed_filter: bool = True
    """Keep a tree if QED > 0.5, else with probability QED / 0.5."""
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    """Train / valid / test fractions of the trees."""
    rt2_keep_unimolecular: bool = False
    """True: the reference's zero-target rt2 rows for unimolecular steps."""


@dataclass
class SynthesisConfig(RootConfig):
    """``python -m synthesis_pathways.train``: the shared keys, the groups and the pipeline's stages."""

    data: DataConfig = MISSING
    """Group ``data``: enamine_1913 | wuxi."""
    model: ModelConfig = MISSING
    """Group ``model``: small | paper."""
    sampling: SamplingConfig = MISSING
    """Group ``sampling``: default."""
    stages: list[Stage] = field(default_factory=lambda: list(Stage))
    """Any subset, in this order; each stage skips what is already on disk."""
    networks: list[Network] = field(default_factory=lambda: list(Network))
    """Which networks to fit (all four are needed to decode)."""


@dataclass
class GAConfig:
    """Root key ``ga`` of ``conf/optimize.yaml``: the genetic algorithm over conditioning fingerprints."""

    population: int = 32
    """Genomes kept per generation."""
    offspring: int = 128
    """Children bred per generation."""
    generations: int = 20
    """Generations at most."""
    num_mut: int = 24
    """Bits flipped by a mutation."""
    mut_probability: float = 0.5
    """Probability that a child is mutated."""
    early_stop_after: int = 30
    """Generations before early stopping may trigger."""
    early_stop_window: int = 10
    """Generations over which the improvement is measured."""
    early_stop_delta: float = 0.01
    """Stop when the mean score improved less than this over the window."""
    max_oracle_calls: int | None = None
    """Budget: stop once this many distinct molecules have been scored (null: no budget). Molecules met after
    the budget is spent are not scored (budgeted benchmarks count every call up to the budget, no more)."""
    auc_every: int = 100
    """Oracle calls between the points of the top-10 AUC curve (as budgeted benchmarks log it)."""
    seed: int = 0
    """Seed of the GA (and of the random policy)."""


@dataclass
class OptimizeConfig(AppConfig):
    """``python -m synthesis_pathways.optimize``: the GA over a trained model."""

    objective: Objective = Objective.qed
    """qed | plogp | celecoxib_similarity | troglitazone_similarity | druglike_mpo."""
    model_dir: str = MISSING
    """Training run holding model.pt (and pipeline.json)."""
    policy: Policy = Policy.model
    """model, or random (baseline without a trained model)."""
    seeds: str = "zinc250k"
    """SMILES file or dataset key for the initial population; "random" for random bits."""
    n_seeds: int = 32
    """Size of the initial population."""
    ga: GAConfig = field(default_factory=GAConfig)
    """The genetic algorithm."""
    progress_bar: bool = True
    """Show a progress bar over generations."""


register("synthesis_pathways", SynthesisConfig,
         {"data": DataConfig, "model": ModelConfig, "sampling": SamplingConfig})
register("synthesis_pathways", OptimizeConfig, name="optimize")
