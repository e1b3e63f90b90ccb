"""``python -m fuyou_offload.deepspeed_run``: the real DeepSpeed ZeRO-Infinity on this package's model and data.

Runs in the environment that has DeepSpeed (``pip install -e '.[fuyou_offload,deepspeed]'``, kept out of
``all``; on a CPU-only box its accelerator is ``DS_ACCELERATOR=cpu`` with the gloo backend, one process).
ZeRO stage 3 with ``offload_param`` and ``offload_optimizer`` on NVMe (``nvme_path`` = ``--nvme-dir``), DeepSpeed's
CPU AdamW, activation checkpointing of every block (as the engine's block-input checkpoints), global-norm
clipping, the same decoder (``model.Block``/``RMSNorm``, tied head), the same initial weights (``init_gpt``'s
values, drawn parameter by parameter) and the same batches as ``bench.bench_schedules``. Prints one JSON object:
median step time, the whole process's peak RSS and the disk bytes the process read and wrote per step.

DeepSpeed's async-I/O (libaio; ``apt-get install libaio-dev``) and CPU-Adam ops compile on first use (about
15-20 CPU-minutes once); the build is cached in ``TORCH_EXTENSIONS_DIR`` (default ``.cache/deepspeed_ops`` at the
repository root, git-ignored) and the run says whether it found it.

Its buffers are sized to the host budget as a user would tune them (DeepSpeed has no budget of its own): the
parameter swap buffers hold the largest parameter (``buffer_count`` 5, the default), the optimizer sub-group
is the largest whose twelve fp32 swap buffers fit in a third of the budget (``pipeline_read``/``pipeline_write``,
the strongest setting, off by default, hold three sub-groups of P32, m, v and gradient: with DeepSpeed's default
four buffers the pipelined swapper fails its ``assert new_alloc_buffers is not None``), prefetch and live
parameters are one and three blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXT_DIR = REPO / ".cache" / "deepspeed_ops"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_io() -> dict[str, int]:
    """Bytes this process read from and wrote to storage (O_DIRECT included), from /proc/self/io."""
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k.strip()] = int(v)
    return {"read": out.get("read_bytes", 0), "write": out.get("write_bytes", 0)}


def ds_config(args, cfg, block_params: int, largest_param: int) -> dict:
    """The ZeRO-Infinity configuration (see the module docstring for how its sizes are chosen)."""
    budget = args.host_budget_mib << 20
    buffers = 12  # pipelined swapping holds 3 sub-groups (in, being updated, out) of P32, m, v, grad
    sub_group = max(largest_param, int(budget / 3 / (4 * buffers)))
    return {
        "train_micro_batch_size_per_gpu": args.batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": args.clip or 0.0,
        "bf16": {"enabled": args.precision == "bf16"},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}},
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": "nvme", "nvme_path": str(args.nvme_dir), "pin_memory": True,
                              "buffer_count": 5, "buffer_size": largest_param, "max_in_cpu": 0},
            "offload_optimizer": {"device": "nvme", "nvme_path": str(args.nvme_dir), "pin_memory": True,
                                  "buffer_count": buffers, "pipeline_read": True, "pipeline_write": True},
            "sub_group_size": sub_group,
            "stage3_prefetch_bucket_size": block_params,
            "stage3_max_live_parameters": 3 * block_params,
            "stage3_max_reuse_distance": block_params,
            "stage3_param_persistence_threshold": 10 * cfg.hidden,
        },
        "aio": {"block_size": 1 << 20, "queue_depth": args.queue_depth, "intra_op_parallelism": 1,
                "single_submit": False, "overlap_events": True},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m fuyou_offload.deepspeed_run", description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--host-budget-mib", type=int, default=1024)
    ap.add_argument("--queue-depth", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nvme-dir", type=Path, required=True, help="a directory on the disk under test (not tmpfs)")
    a = ap.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXT_DIR))
    ext_dir = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    cached = {op: any(ext_dir.glob(f"**/{op}/*.so")) for op in ("async_io", "cpu_adam")}
    print(f"deepspeed ops cache {ext_dir}: " + ", ".join(f"{k} {'found' if v else 'missing: compiles now (minutes)'}"
                                                     for k, v in cached.items()), file=sys.stderr, flush=True)
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(k, v)

    import deepspeed
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    from common.bench import peak_rss_bytes, reset_peak_rss

    from .model import Block, GPTConfig, RMSNorm, _init_param

    torch.manual_seed(a.seed)
    cfg = GPTConfig(vocab_size=a.vocab, hidden=a.hidden, layers=a.layers, heads=a.heads)

    class Decoder(nn.Module):
        """``model.GPT`` laid out for ZeRO-3: the tied head is registered as an external parameter."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
            self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
            deepspeed.zero.register_external_parameter(self, self.embed.weight)

        def forward(self, tokens, targets):
            x = self.embed(tokens)
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            logits = F.linear(self.norm(x), self.embed.weight)
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    a.nvme_dir.mkdir(parents=True, exist_ok=True)
    deepspeed.init_distributed(dist_backend="gloo")
    conf = ds_config(a, cfg, cfg.block_params(), max(cfg.vocab_size * cfg.hidden, cfg.hidden * cfg.intermediate))
    t0 = time.perf_counter()
    with deepspeed.zero.Init(config_dict_or_path=conf, remote_device="nvme", pin_memory=True):
        model = Decoder()
    # init_gpt's values, in GPT.named_parameters() order (ends first, then blocks), one parameter at a time
    g = torch.Generator().manual_seed(a.seed)
    named = {"ends.embed.weight": model.embed.weight, "ends.norm.weight": model.norm.weight}
    named.update({f"blocks.{i}.{n}": p for i, b in enumerate(model.blocks) for n, p in b.named_parameters()})
    order = ["ends.embed.weight", "ends.norm.weight"] + [k for k in named if k.startswith("blocks.")]
    for name in order:
        p = named[name]
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            p.data.copy_(_init_param(name, p.ds_shape, g, cfg.init_std))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=conf)
    init_s = time.perf_counter() - t0
    init_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset = reset_peak_rss()  # VmHWM from here on: the training steps' peak, apart from initialisation's
    gd = torch.Generator().manual_seed(a.seed)
    data = torch.randint(0, cfg.vocab_size, (64, a.batch, a.seq + 1), generator=gd)
    times, losses, io = [], [], []
    for i in range(a.warmup + a.repeats):
        batch = data[i % data.shape[0]]
        io0, t = _proc_io(), time.perf_counter()
        loss = engine(batch[:, :-1], batch[:, 1:])
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - t)
        io1 = _proc_io()
        io.append({k: io1[k] - io0[k] for k in io0})
        losses.append(float(loss.detach()))
    steady = times[a.warmup:]
    res = {
        "deepspeed_version": deepspeed.__version__, "model_params": cfg.num_params(), "tokens_per_step": a.batch * a.seq,
        "median_step_s": statistics.median(steady), "min_step_s": min(steady), "max_step_s": max(steady),
        "step_s": times, "losses": losses, "init_s": init_s,
        "disk_read_bytes_per_step": statistics.median(x["read"] for x in io[a.warmup:]),
        "disk_write_bytes_per_step": statistics.median(x["write"] for x in io[a.warmup:]),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "init_peak_rss_bytes": init_peak, "steps_peak_rss_bytes": peak_rss_bytes() if reset else None,
        "host_budget_bytes": a.host_budget_mib << 20, "ops_cache_found": cached, "config": conf,
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
