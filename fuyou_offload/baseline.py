"""``schedule=in_memory``: standard training, everything in RAM, plain ``torch.optim.AdamW``.

It is the reference of the equivalence tests and the baseline of the benchmarks, so it uses exactly
the same model code, parameter groups, learning-rate schedule and ``clip_grad_norm_``.
"""

from __future__ import annotations

import time

import torch

from .engine import OptimConfig, param_decays
from .model import GPT


def build_adamw(model: GPT, cfg: OptimConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if param_decays(name, p.shape) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=False,
                             fused=cfg.impl == "fused")


class InMemoryTrainer:
    def __init__(self, model: GPT, optim: OptimConfig, compute_dtype: str = "fp32", device: str = "cpu"):
        self.model = model.to(device)
        self.ocfg = optim
        self.opt = build_adamw(self.model, optim)
        self.autocast = compute_dtype == "bf16"
        self.device = torch.device(device)
        self.step = 0

    def train_step(self, tokens: torch.Tensor, targets: torch.Tensor, extra: dict | None = None) -> dict[str, float]:
        t0 = time.perf_counter()
        self.step += 1
        lr = self.ocfg.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        tokens, targets = tokens.to(self.device), targets.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model.loss(tokens, targets)
        loss.backward()
        t_bwd = time.perf_counter()
        if self.ocfg.clip_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.ocfg.clip_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.model.parameters()]))
        if not torch.isfinite(norm):
            raise FloatingPointError(f"step {self.step}: gradient norm is {float(norm)}")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        return {"loss": float(loss.detach()), "grad_norm": float(norm), "lr": lr, "step_s": t1 - t0,
                "compute_s": t_bwd - t0, "optimizer_tail_s": t1 - t_bwd, "tokens": int(tokens.numel()),
                "ssd_read_bytes": 0, "ssd_write_bytes": 0}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "step": self.step}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = state["step"]
