"""Models of the method: the mixed-vocabulary teacher (stage I), the student, the shared projections
(stage II) and the logit-distillation baseline loss.

Notation (paper note): teacher width H, student width d, FFN widths F = 4H and f = 4d, V_t / V_s the
teacher / student vocabularies, E_t / E_s their embedding tables.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from .mixed import IGNORE_INDEX

# ----------------------------------------------------------------------------- sizes


def bert_param_count(vocab: int, hidden: int, layers: int, ffn: int | None = None, max_positions: int = 512,
                     type_vocab: int = 2, pooler: bool = True) -> int:
    """Analytic parameter count of a ``BertModel`` (embeddings, encoder, optional pooler; no MLM head)."""
    h, f = hidden, ffn if ffn is not None else 4 * hidden
    embeddings = (vocab + max_positions + type_vocab) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    return embeddings + layers * layer + ((h * h + h) if pooler else 0)


def student_config(vocab_size: int, hidden: int, layers: int, *, heads: int | None = None,
                   max_positions: int = 512, type_vocab: int = 2) -> BertConfig:
    """A BERT config for the student: FFN 4d and d/16 heads (3, 6, 12 for d = 48, 96, 192) by default."""
    heads = heads or max(1, hidden // 16)
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=4 * hidden,
                      max_position_embeddings=max_positions, type_vocab_size=type_vocab,
                      hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


@contextmanager
def quiet_transformers():
    """Silence transformers' load reports where missing/unexpected keys are expected (a new head, an MLM
    folder loaded as a bare encoder)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_teacher_mlm(model_dir: str | os.PathLike) -> BertForMaskedLM:
    """The teacher as ``BertForMaskedLM``. MiniLM ships no MLM head: the transform and decoder bias start
    random (stage 0 trains them); the decoder weight is tied to E_t."""
    with quiet_transformers():
        return BertForMaskedLM.from_pretrained(str(model_dir), local_files_only=True)


def load_encoder(model_dir: str | os.PathLike) -> BertModel:
    """The bare encoder of any BERT folder (an MLM head, if present, is dropped)."""
    with quiet_transformers():
        return BertModel.from_pretrained(str(model_dir), local_files_only=True)


# ----------------------------------------------------------------------------- stage I


@dataclass
class MLMOutput:
    loss: torch.Tensor
    n_teacher: int  # masked tokens predicted over V_t
    n_student: int  # masked tokens predicted over V_s
    correct_teacher: int
    correct_student: int
    predictions: torch.Tensor | None = None  # argmax per masked token, in the shared id space


class MixedVocabMLM(nn.Module):
    """The teacher trained on mixed-vocabulary input with two tied softmaxes (stage I, and stage 0 at p=0).

    Input ids live in the shared space of ``mixed.MixedVocabCodec``: ``id < |V_t|`` is a V_t token embedded
    by E_t; ``id >= |V_t|`` is the V_s token ``id - |V_t|`` embedded by ``P_e E_s + b_e``. Position and
    segment embeddings and the embedding LayerNorm are the teacher's. A masked token is predicted over the
    vocabulary that segmented it: ``E_t h' + c_t`` or ``E_s (Q h') + c_s``, with h' the MLM transform.
    """

    def __init__(self, teacher: BertForMaskedLM, student_vocab_size: int, student_dim: int):
        super().__init__()
        self.teacher = teacher
        self.n_teacher = teacher.config.vocab_size
        self.n_student = student_vocab_size
        hidden = teacher.config.hidden_size
        self.student_embeddings = nn.Embedding(student_vocab_size, student_dim)  # E_s
        self.embed_up = nn.Linear(student_dim, hidden)  # P_e, b_e
        self.student_down = nn.Linear(hidden, student_dim, bias=False)  # Q
        self.student_bias = nn.Parameter(torch.zeros(student_vocab_size))  # c_s
        nn.init.normal_(self.student_embeddings.weight, std=teacher.config.initializer_range)
        # Mixing-schedule position, saved with the weights so that a resumed run continues the ramp exactly.
        self.register_buffer("mix_step", torch.zeros((), dtype=torch.long))

    @property
    def teacher_embeddings(self) -> nn.Embedding:
        return self.teacher.bert.embeddings.word_embeddings

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_student = input_ids >= self.n_teacher
        t = self.teacher_embeddings(input_ids.masked_fill(is_student, 0))
        if not bool(is_student.any()):
            return t
        s = self.embed_up(self.student_embeddings((input_ids - self.n_teacher).clamp(min=0)))
        return torch.where(is_student.unsqueeze(-1), s, t)

    def hidden_states(self, input_ids, attention_mask) -> torch.Tensor:
        return self.teacher.bert(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask)[0]

    def two_softmax_logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over V_t and over V_s for final hidden states ``h`` ([n, H])."""
        pred = self.teacher.cls.predictions
        hp = pred.transform(h)
        logits_t = pred.decoder(hp)  # tied to E_t, bias c_t
        logits_s = self.student_down(hp) @ self.student_embeddings.weight.t() + self.student_bias
        return logits_t, logits_s

    def mlm_loss(self, input_ids, attention_mask, labels) -> MLMOutput:
        """Cross-entropy over the masked tokens, each routed to the softmax of its own vocabulary,
        summed and divided by the number of masked tokens."""
        h = self.hidden_states(input_ids, attention_mask)
        sel = labels != IGNORE_INDEX
        return two_softmax_loss(self, h[sel], labels[sel])

    def forward(self, input_ids, attention_mask, labels) -> MLMOutput:
        return self.mlm_loss(input_ids, attention_mask, labels)


def two_softmax_loss(model: MixedVocabMLM, h: torch.Tensor, y: torch.Tensor) -> MLMOutput:
    """The routed MLM loss for masked hidden states ``h`` ([n, H]) and shared-space targets ``y`` ([n]);
    also each token's prediction (the argmax of its own vocabulary's softmax, in the shared id space)."""
    n = y.numel()
    if n == 0:
        zero = h.sum() * 0.0
        return MLMOutput(zero, 0, 0, 0, 0, y.clone())
    is_s = y >= model.n_teacher
    pred = model.teacher.cls.predictions
    hp = pred.transform(h)
    total = hp.new_zeros(())
    predictions = torch.empty_like(y)
    ct = cs = 0
    if bool((~is_s).any()):
        lt = pred.decoder(hp[~is_s])
        total = total + F.cross_entropy(lt.float(), y[~is_s], reduction="sum")
        predictions[~is_s] = lt.argmax(-1)
        ct = int((predictions[~is_s] == y[~is_s]).sum())
    if bool(is_s.any()):
        ls = model.student_down(hp[is_s]) @ model.student_embeddings.weight.t() + model.student_bias
        ys = y[is_s] - model.n_teacher
        total = total + F.cross_entropy(ls.float(), ys, reduction="sum")
        predictions[is_s] = ls.argmax(-1) + model.n_teacher
        cs = int((predictions[is_s] == y[is_s]).sum())
    n_s = int(is_s.sum())
    return MLMOutput(total / n, n - n_s, n_s, ct, cs, predictions.detach())


def set_encoder_trainable(model: MixedVocabMLM, trainable: bool) -> None:
    """Freeze/unfreeze the teacher encoder and E_t (stage 0 first trains the MLM head alone)."""
    for p in model.teacher.bert.parameters():
        p.requires_grad_(trainable)


def init_student_from_stage1(student: BertForMaskedLM, stage1: MixedVocabMLM) -> None:
    """Copy the stage-I student table E_s into the student's input (and tied output) embeddings."""
    emb = student.bert.embeddings.word_embeddings
    if emb.weight.shape != stage1.student_embeddings.weight.shape:
        raise ValueError(f"student embeddings {tuple(emb.weight.shape)} != stage-I E_s "
                         f"{tuple(stage1.student_embeddings.weight.shape)}")
    with torch.no_grad():
        emb.weight.copy_(stage1.student_embeddings.weight)


# ----------------------------------------------------------------------------- stage II


def _dim_type(size: int, hidden: int, ffn: int) -> str:
    if size == hidden:
        return "h"
    if size == ffn:
        return "f"
    raise ValueError(f"dimension {size} is neither the hidden ({hidden}) nor the FFN ({ffn}) width")


def _chain(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a @ b @ c`` in the cheaper association order. For the FFN matrices of a d = 96 student this halves
    the projection cost, which does not shrink with the batch and dominates small-batch stage-II steps."""
    (i, j), k, m = a.shape, b.shape[1], c.shape[1]
    left_first = i * j * k + i * k * m  # (a @ b) @ c
    right_first = j * k * m + i * j * m  # a @ (b @ c)
    return (a @ b) @ c if left_first <= right_first else a @ (b @ c)


PROJECTION_FAMILIES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out", "bias", "norm")
"""Tensor families of the projection loss, whose shares are logged: the six weight-matrix roles, the Linear
biases and the LayerNorm gains and shifts."""


def tensor_family(name: str) -> str:
    """The family of an encoder-layer parameter name (``attention.self.query.weight`` -> ``query``)."""
    if "LayerNorm" in name:
        return "norm"
    if name.endswith(".bias"):
        return "bias"
    for key, family in (("attention.self.query", "query"), ("attention.self.key", "key"),
                        ("attention.self.value", "value"), ("attention.output.dense", "attn_out"),
                        ("intermediate.dense", "ffn_in"), ("output.dense", "ffn_out")):
        if name.startswith(key):
            return family
    raise ValueError(f"no projection family for encoder parameter {name!r}")


class SharedProjection(nn.Module):
    """Projections between teacher and student *parameters*, shared by all layers and roles.

    One down-projection per dimension type (U_h: H x d, U_f: F x f) and one up-projection (V_h, V_f).
    For every encoder-layer weight matrix of role k in layer l (Q, K, V, attention output, FFN in, FFN out)
    with row/column dimension types a, b:

    - down: ``mean((U_a^T W^t U_b - W^s)^2)``
    - up:   ``mean((W^t - V_a W^s V_b^T)^2)``

    The paper projects weight matrices; ``biases`` / ``norms`` add the Linear biases and the LayerNorm gains
    and shifts with a one-sided projection (``U_a^T beta^t`` versus ``beta^s``). They are off by default: a
    one-sided orthogonal projection of all-positive teacher gains gives targets of either sign, and on a
    fresh student those vector terms were 95% of the summed loss (issue 24).

    ``normalize`` (default) divides each tensor's term by the teacher tensor's mean square, so every term is
    a relative error (1 for a zero student against an orthogonal down-projection of a constant tensor) and
    the loss is their *mean* over tensors: no family dominates by its scale or count, and ``alpha = 1``
    weighs an average relative error. ``normalize=False`` is the plain sum of mean squared errors.
    """

    def __init__(self, teacher_config: BertConfig, student_config: BertConfig, init: str = "orthogonal",
                 *, biases: bool = False, norms: bool = False, normalize: bool = True):
        super().__init__()
        self.biases, self.norms, self.normalize = biases, norms, normalize
        if teacher_config.num_hidden_layers != student_config.num_hidden_layers:
            raise ValueError("shared projections pair layer l of the teacher with layer l of the student: "
                             f"{teacher_config.num_hidden_layers} != {student_config.num_hidden_layers} layers")
        self.t_dims = {"h": teacher_config.hidden_size, "f": teacher_config.intermediate_size}
        self.s_dims = {"h": student_config.hidden_size, "f": student_config.intermediate_size}
        self.down = nn.ParameterDict({k: nn.Parameter(torch.empty(self.t_dims[k], self.s_dims[k]))
                                      for k in ("h", "f")})
        self.up = nn.ParameterDict({k: nn.Parameter(torch.empty(self.t_dims[k], self.s_dims[k]))
                                    for k in ("h", "f")})
        for p in (*self.down.values(), *self.up.values()):
            if init == "orthogonal":  # orthonormal columns: U^T W U starts as a faithful compression of W
                nn.init.orthogonal_(p)
            elif init == "normal":
                nn.init.normal_(p, std=self.t_dims["h"] ** -0.5)
            else:
                raise ValueError(f"unknown projection init {init!r}")

    def includes(self, family: str) -> bool:
        if family == "bias":
            return self.biases
        if family == "norm":
            return self.norms
        return True

    def pairs(self, teacher: BertModel, student: BertModel):
        """Yield (name, family, teacher tensor, student tensor, dimension types) for every projected tensor."""
        th, tf = self.t_dims["h"], self.t_dims["f"]
        for li, (lt, ls) in enumerate(zip(teacher.encoder.layer, student.encoder.layer)):
            s_params = dict(ls.named_parameters())
            for name, wt in lt.named_parameters():
                family = tensor_family(name)
                if not self.includes(family):
                    continue
                ws = s_params[name]
                types = tuple(_dim_type(s, th, tf) for s in wt.shape)
                yield f"layer{li}.{name}", family, wt, ws, types

    def project_down(self, wt: torch.Tensor, types: tuple[str, ...]) -> torch.Tensor:
        if len(types) == 1:
            return self.down[types[0]].t() @ wt
        return _chain(self.down[types[0]].t(), wt, self.down[types[1]])

    def project_up(self, ws: torch.Tensor, types: tuple[str, ...]) -> torch.Tensor:
        if len(types) == 1:
            return self.up[types[0]] @ ws
        return _chain(self.up[types[0]], ws, self.up[types[1]].t())

    def terms(self, teacher: BertModel, student: BertModel, direction: str = "down") -> dict[str, tuple[str, torch.Tensor]]:
        """Each projected tensor's term ``{name: (family, term)}``, already divided by the teacher tensor's
        mean square when ``normalize``; ``direction`` is down, up or both (the sum of the two)."""
        if direction not in ("down", "up", "both"):
            raise ValueError(f"direction must be down, up or both, got {direction!r}")
        out = {}
        for name, family, wt, ws, types in self.pairs(teacher, student):
            wt = wt.detach()
            term = 0.0
            if direction in ("down", "both"):
                term = term + (self.project_down(wt, types) - ws).pow(2).mean()
            if direction in ("up", "both"):
                term = term + (wt - self.project_up(ws, types)).pow(2).mean()
            if self.normalize:
                term = term / wt.pow(2).mean().clamp_min(1e-12)
            out[name] = (family, term)
        return out

    def loss_and_shares(self, teacher: BertModel, student: BertModel,
                        direction: str = "down") -> tuple[torch.Tensor, dict[str, float]]:
        """The projection loss (mean of the normalised terms, or the sum of the raw ones) and each family's
        share of it (fractions summing to 1; families left out are absent)."""
        terms = self.terms(teacher, student, direction)
        total = sum(t for _, t in terms.values())
        if self.normalize:
            total = total / len(terms)
        sums: dict[str, float] = {}
        for family, t in terms.values():
            sums[family] = sums.get(family, 0.0) + float(t.detach())
        whole = sum(sums.values())
        return total, {f: (v / whole if whole > 0 else 0.0) for f, v in sums.items()}

    def loss(self, teacher: BertModel, student: BertModel, direction: str = "down") -> torch.Tensor:
        return self.loss_and_shares(teacher, student, direction)[0]

    @torch.no_grad()
    def copy_projected_teacher(self, teacher: BertModel, student: BertModel) -> None:
        """Set every projected student tensor to its down-projected teacher tensor (an optional init)."""
        for _, _, wt, ws, types in self.pairs(teacher, student):
            ws.copy_(self.project_down(wt, types))


# ----------------------------------------------------------------------------- logit KD baseline


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 2.0, kd_weight: float = 0.5) -> torch.Tensor:
    """(1 - w) CE(student, labels) + w T^2 KL(teacher_T || student_T), over the masked positions only."""
    sel = labels != IGNORE_INDEX
    s, t, y = student_logits[sel].float(), teacher_logits[sel].float(), labels[sel]
    if y.numel() == 0:
        return student_logits.sum() * 0.0
    ce = F.cross_entropy(s, y)
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                  log_target=True, reduction="batchmean") * temperature**2
    return (1 - kd_weight) * ce + kd_weight * kl


# ----------------------------------------------------------------------------- export


def make_tiny_teacher(out_dir: str | os.PathLike, vocab_file: str | os.PathLike, *, hidden: int = 32,
                      layers: int = 2, seed: int = 0) -> Path:
    """A random, tiny BERT MLM folder over a real vocabulary: a stand-in teacher for smoke runs and tests
    (it exercises every code path in seconds and says nothing about quality)."""
    n_vocab = len(Path(vocab_file).read_text(encoding="utf-8").splitlines())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=n_vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 16), intermediate_size=4 * hidden,
                     max_position_embeddings=512)
    return save_bert_folder(BertForMaskedLM(cfg), vocab_file, out_dir)



def save_bert_folder(model: BertForMaskedLM, vocab_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Save a model and its WordPiece tokenizer as a standard transformers folder
    (``BertModel.from_pretrained(out_dir)`` and ``BertTokenizerFast.from_pretrained(out_dir)`` load it)."""
    from transformers import BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokens = Path(vocab_file).read_text(encoding="utf-8").splitlines()
    # transformers 5 takes the vocabulary as `vocab` (a `vocab_file` keyword is silently ignored there)
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tok.save_pretrained(out)
    # transformers 5 writes tokenizer.json only; keep the plain vocab.txt beside it for other tools.
    shutil.copyfile(vocab_file, out / "vocab.txt") if Path(vocab_file).resolve() != (out / "vocab.txt").resolve() else None
    return out
