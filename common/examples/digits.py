"""The whole recipe on scikit-learn's digits: data, model, loss, evaluation, Hydra shell.

It is the toy problem of the core's tests and the template for a supervised package:

    python -m common.examples.digits                       # 8x8 digits, a 2-layer MLP, ~10 s
    python -m common.examples.digits trainer.max_epochs=20 model.hidden=128 name=digits_wide
    python -m common.examples.digits resume=auto           # continue the run in runs/digits
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import MISSING, DictConfig
from torch import nn
from torch.utils.data import TensorDataset

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from common.hydra_utils import report_user_errors, run_dir_from, to_dataclass, to_plain
from common.schema import RootConfig, register
from common.trainer import FitResult, Trainer


@dataclass
class DigitsModelConfig:
    """The ``model`` group (conf/model/mlp.yaml)."""

    hidden: int = 64
    """Width of the hidden layer."""
    lr: float = 1e-2
    """Adam learning rate."""
    n_val: int = 297
    """Held-out images (the remaining 1,500 train)."""
    dropout: float = 0.0
    """Dropout after the hidden layer (random draws every step: what exact resume must reproduce)."""


def load_digits_split(n_val: int = 297, split_seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, val): 8x8 images scaled to [0, 1] as 64 features, labels 0-9; a fixed seeded split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class MLP(nn.Module):
    def __init__(self, n_in: int = 64, hidden: int = 64, n_out: int = 10, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 64) -> (B, 10)
        return self.net(x)


def loss_fn(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    x, y = batch
    logits = model(x)
    return {"loss": nn.functional.cross_entropy(logits, y), "acc": (logits.argmax(-1) == y).float().mean()}


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    device = next(model.parameters()).device
    return float((model(x.to(device)).argmax(-1).cpu() == y).float().mean())


def train_digits(trainer_cfg, run_dir, model_cfg: DigitsModelConfig | None = None, *,
                 logger_cfg=None, resume: str = "never", config=None) -> tuple[MLP, FitResult]:
    """Train the MLP with the common Trainer; returns the final model and the fit result."""
    model_cfg = model_cfg or DigitsModelConfig()
    train, val = load_digits_split(model_cfg.n_val)
    torch.manual_seed(trainer_cfg.seed)
    model = MLP(hidden=model_cfg.hidden, dropout=model_cfg.dropout)
    trainer = Trainer(trainer_cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=config)
    result = trainer.fit(
        model, train, loss_fn,
        optimizer_fn=lambda m: torch.optim.Adam(m.parameters(), lr=model_cfg.lr),
        scheduler_fn=lambda opt, total: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / (total + 1)),
        eval_fn=lambda m: {"acc": accuracy(m, val)}, eval_metrics=("acc",),
    )
    return model, result


@dataclass
class DigitsConfig(RootConfig):
    """The whole composed config (conf/digits.yaml): trainer, paths, logger, name, resume and the model."""

    model: DigitsModelConfig = MISSING
    """The MLP and its optimizer (group ``model``)."""


# Schemas under schema/digits/ (Hydra's ConfigStore is global: a plain `model` group here would add an option
# to every other app's `model` group). conf/digits.yaml starts from schema/digits/digits (the root) and every
# conf/model/*.yaml from schema/digits/model.
register("digits", DigitsConfig, {"model": DigitsModelConfig}, name="digits")


# An absolute config_path works both for `python -m` and when main() is called from another module.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="digits")
@report_user_errors
def main(cfg: DictConfig) -> float:
    model_cfg = to_dataclass(cfg.model, DigitsModelConfig)
    _, result = train_digits(cfg.trainer, run_dir_from(cfg), model_cfg, logger_cfg=cfg.logger,
                             resume=cfg.resume, config=to_plain(cfg))
    print(f"final val acc {result.last_metrics.get('acc', float('nan')):.4f} after {result.step} steps "
          f"({result.stopped_reason})")
    return result.last_metrics.get("acc", 0.0)


if __name__ == "__main__":
    main()
