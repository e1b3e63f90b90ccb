"""The fine-tuning loop behind ``python -m fuyou_offload.train`` (importable and runnable without Hydra).

One loop for the three schedules: ``fuyou`` and ``zero_infinity`` drive an ``OffloadEngine`` (state on
SSD, committed every step), ``in_memory`` drives ``InMemoryTrainer`` with ``common.checkpoint``. Every
step logs loss, tokens/s, SSD bytes moved beside the analytic count, host pool peak and peak RSS;
the run ends with predicted against measured step time.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from common.bench import current_rss_bytes, peak_rss_bytes
from common.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    seed_everything,
)
from common.logging import MetricLogger, get_logger
from common.progress import progress
from common.runinfo import write_run_info

from .baseline import InMemoryTrainer
from .data import ByteTokenizer, HFTokenizer, batch_for_step, load_corpus
from .engine import EngineConfig, OffloadEngine, OptimConfig
from .memory import HostBudgetError
from .model import GPT, GPTConfig, init_gpt, init_gpt_units, load_smollm2
from .planner import (
    BlockPlan,
    Profile,
    choose_plan,
    fixed_host_bytes,
    plan_for_fraction,
    predict_step,
    size_buffers,
    ssd_staging_blocks,
)

log = get_logger("fuyou_offload")

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40}


def parse_bytes(v: Any) -> int:
    """``2GiB``, ``512MiB``, ``1.5G`` or a plain number of bytes."""
    if isinstance(v, (int, float)):
        return int(v)
    s = str(v).strip().upper().replace(" ", "")
    num = s.rstrip("KMGTIB")
    unit = s[len(num):]
    try:
        return int(float(num) * _UNITS[unit])
    except (KeyError, ValueError):
        raise ValueError(f"cannot read {v!r} as a size (examples: 2GiB, 512MiB, 1073741824)") from None


def build_model(mcfg, seed: int, materialize: bool = True):
    """(initial weights, GPTConfig, tokenizer) for ``model.source``: smollm2 (the shipped SmolLM2-135M) or
    random. With ``materialize=False`` a random model comes as a per-unit iterator (``init_gpt_units``),
    so that a model larger than the host budget never exists whole in RAM."""
    if mcfg.source == "smollm2":
        model, tok = load_smollm2()
        return model, model.cfg, HFTokenizer(tok)
    if mcfg.source == "random":
        fields = {k: mcfg[k] for k in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "intermediate",
                                       "rope_theta", "tie_embeddings") if k in mcfg and mcfg[k] is not None}
        cfg = GPTConfig(**fields)
        init = init_gpt(cfg, seed) if materialize else init_gpt_units(cfg, seed)
        return init, cfg, ByteTokenizer()
    raise ValueError(f"model.source must be smollm2 or random, not {mcfg.source!r}")


def optim_config(cfg) -> OptimConfig:
    o = cfg.optim
    return OptimConfig(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                       clip_grad_norm=cfg.trainer.clip_grad_norm, warmup_steps=o.warmup_steps, decay=o.decay,
                       total_steps=cfg.trainer.max_steps, impl=o.impl)


def reserve_bytes(cfg, rss_base: int | None = None) -> int:
    """``memory.reserve`` in bytes; auto: ``rss_base`` (the RSS before any model was built) + 256 MiB."""
    reserve = cfg.memory.get("reserve", 0)
    if str(reserve) == "auto":
        return (current_rss_bytes() if rss_base is None else rss_base) + (256 << 20)
    return parse_bytes(reserve)


def pool_budget(cfg, rss_base: int | None = None) -> int:
    """The staging pool's share of ``memory.host_budget``: the whole process budget minus
    ``memory.reserve`` (auto: the RSS of the interpreter and libraries now, plus 256 MiB for compute
    temporaries that autograd allocates outside the pool)."""
    total = parse_bytes(cfg.memory.host_budget)
    reserve = reserve_bytes(cfg, rss_base)
    pool = total - reserve
    if pool <= 0:
        raise HostBudgetError(f"memory.host_budget={cfg.memory.host_budget} leaves nothing for staging buffers after "
                              f"memory.reserve ({reserve / 2**20:.0f} MiB: interpreter, libraries, "
                              "compute temporaries)")
    return pool


def engine_config(cfg, model_cfg: GPTConfig | None = None, rss_base: int | None = None) -> EngineConfig:
    """The engine's options; ``auto`` prefetch depth / optimizer chunk are sized to the host budget."""
    off = cfg.offload
    thr = off.throttle_mb_s
    budget = pool_budget(cfg, rss_base)
    depth, chunk, inflight = off.prefetch_depth, off.opt_chunk_elems, 2
    if "auto" in (str(depth), str(chunk)):
        if model_cfg is None:
            raise ValueError("auto buffer sizing needs the model config")
        el = 2 if cfg.trainer.precision == "bf16" else 4
        on_host, grad_elem = grads_on_host(cfg.schedule, bool(cfg.trainer.clip_grad_norm), str(off.grad_tier),
                                           model_cfg.num_params(), budget, el)
        d, c, inflight, _ = size_buffers(model_cfg, budget, compute_elem=el, grads_all_on_host=on_host,
                                         grad_elem=grad_elem)
        depth = d if str(depth) == "auto" else int(depth)
        chunk = c if str(chunk) == "auto" else int(chunk)
    return EngineConfig(
        schedule=cfg.schedule, compute_dtype=cfg.trainer.precision, host_budget=budget,
        queue_depth=off.queue_depth, request_bytes=parse_bytes(off.request_bytes),
        throttle_bytes_per_s=thr * 1e6 if thr else None, prefetch_depth=int(depth),
        opt_chunk_elems=int(chunk), max_inflight_updates=inflight, grad_tier=str(off.grad_tier),
        clip_overlap=str(off.clip_overlap),
        verify_on_resume=off.verify_on_resume, checksum=off.checksum, device=_device(cfg.trainer.device),
    )


def grads_on_host(schedule: str, clip: bool, grad_tier: str, n_params: int, budget: int,
                  compute_elem: int) -> tuple[bool, int]:
    """(all gradients held in host memory, bytes per parameter): fuyou's clip replay keeps fp32 gradients
    on the host tier; ZeRO-Infinity keeps every gradient in its model-dtype flat buffer."""
    if schedule == "zero_infinity":
        return True, compute_elem
    tier = grad_tier if grad_tier != "auto" else ("host" if 4 * n_params <= budget // 4 else "ssd")
    return clip and tier == "host", 4


def _device(d: str) -> str:
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return d


def host_bytes_for_activations(mcfg: GPTConfig, ec: EngineConfig, optim: OptimConfig) -> int:
    """What the activation plan may keep in host memory: 80 % of the pool left after the fixed buffers."""
    el = 2 if ec.compute_dtype == "bf16" else 4
    on_host, grad_elem = grads_on_host(ec.schedule, bool(optim.clip_grad_norm), ec.grad_tier, mcfg.num_params(),
                                       ec.host_budget, el)
    fixed = fixed_host_bytes(mcfg, compute_elem=el, depth=ec.prefetch_depth, chunk_elems=ec.opt_chunk_elems,
                             grads_all_on_host=on_host, grad_elem=grad_elem)
    return max(0, int(0.8 * (ec.host_budget - fixed)))


def ssd_window(ec: EngineConfig) -> int:
    """Blocks of SSD activations the engine stages in host memory at once (``planner.ssd_staging_blocks``)."""
    return ssd_staging_blocks(max(0, ec.prefetch_depth) if ec.overlap else 0)


def step_schedule(engine: OffloadEngine, m: dict | None = None, clip_binds: bool = False) -> str:
    """The planner's schedule for a step of ``engine`` (see ``planner``): from the step's metrics ``m`` when
    given, else from whether the clip is expected to bind."""
    if engine.zero3:
        return "zero3"
    if not engine.cfg.overlap:
        return "none"
    if m is not None:
        if m.get("deferred_units") or m.get("deferred_units_run"):
            return "deferred"
        clip_binds = m.get("clip_coef", 1.0) < 1.0
    if clip_binds:
        return "deferred" if engine.cfg.clip_overlap == "next_forward" else "serial"
    return "overlap"


def predicted(engine: OffloadEngine, prof: Profile, schedule: str, batch: int, seq: int):
    """The cost model's prediction for ``engine``'s current plan under ``schedule``."""
    return predict_step(engine.mcfg, engine.plans, prof, batch=batch, seq=seq, compute_elem=engine.dtype.itemsize,
                        schedule=schedule, grads_to_ssd=engine.grads_to_ssd, attn=engine.attn)


def make_plans(cfg, mcfg: GPTConfig, ec: EngineConfig, optim: OptimConfig, batch: int, seq: int,
               state_dir: Path) -> tuple[list[BlockPlan], Profile, dict, bool]:
    """(plans for the first step, profile, measured floors, whether step 1 is the profiling step).

    With ``offload.plan=auto`` the floors are measured (disk, memcpy, AdamW) but the compute rate comes
    from the first training step, run with the profiling plan (block inputs only, full recompute, as in
    the paper); ``replan`` then picks the plan for the remaining steps. No extra model copy is needed."""
    spec = str(cfg.offload.plan)
    el = 2 if ec.compute_dtype == "bf16" else 4
    free = host_bytes_for_activations(mcfg, ec, optim)
    prof, raw = Profile(), {}
    profiling_step = 2 if ec.schedule == "fuyou" and spec == "auto" else 0
    if profiling_step or cfg.offload.profile:
        from .profiling import measure_floors

        prof, raw = measure_floors(state_dir / "profile", io_bytes=parse_bytes(cfg.offload.profile_io_bytes),
                                   gemm_n=256, dtype=torch.bfloat16 if el == 2 else torch.float32,
                                   queue_depth=ec.queue_depth, request_bytes=ec.request_bytes,
                                   throttle=ec.throttle_bytes_per_s, adam_impl=optim.impl)
    if ec.schedule != "fuyou" or spec in ("recompute", "auto"):
        plans = [BlockPlan() for _ in range(mcfg.layers)]
    else:
        plans = plan_for_fraction(mcfg, int(spec), batch=batch, seq=seq, compute_elem=el,
                                  host_bytes_free=free, ssd_window=ssd_window(ec),
                                  ckpt_tier=str(cfg.offload.ckpt_tier))
    if profiling_step:
        raw.pop("flops_per_s", None)  # the compute rate comes from the profiling step instead
    return plans, prof, raw, profiling_step


def replan(engine: OffloadEngine, prof: Profile, first: dict, optim: OptimConfig, batch: int, seq: int):
    """After the profiling step: the compute rate from its measured compute time (the only quantity taken
    from a training step; nothing is fitted to the step time), then the cost model for the schedule the
    steady state will run (clip binding or not, as in the profiling step)."""
    mcfg, el = engine.mcfg, engine.dtype.itemsize
    t = batch * seq
    f_fwd = mcfg.layers * sum(mcfg.block_matmul_flops(t, seq).values()) + 2.0 * t * mcfg.hidden * mcfg.vocab_size
    f_rec = mcfg.layers * sum(mcfg.block_matmul_flops(t, seq).values())
    prof.flops_per_s = (3 * f_fwd + f_rec) / max(first["compute_s"], 1e-9)
    schedule = step_schedule(engine, clip_binds=first.get("clip_coef", 1.0) < 1.0)
    plans, pred = choose_plan(mcfg, prof, batch=batch, seq=seq, compute_elem=el,
                              host_bytes_free=host_bytes_for_activations(mcfg, engine.cfg, optim),
                              ssd_window=ssd_window(engine.cfg),
                              schedule=schedule, grads_to_ssd=engine.grads_to_ssd, attn=engine.attn)
    engine.set_plans(plans)
    return plans, pred


def run(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, Any]:
    """Train per ``cfg`` into ``run_dir``; returns a summary (also written to ``summary.json``)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tr = cfg.trainer
    if tr.num_threads:
        torch.set_num_threads(tr.num_threads)
    if not tr.max_steps:
        raise ValueError("trainer.max_steps must be set: fuyou_offload trains by steps (random windows of the corpus)")
    if tr.grad_accum_steps != 1:
        raise ValueError("trainer.grad_accum_steps must be 1 (the layer-by-layer engine has no accumulation yet)")
    seed_everything(tr.seed)
    rss_start = current_rss_bytes()  # interpreter + libraries: what the host budget does not cover
    model, mcfg, tok = build_model(cfg.model, tr.seed, materialize=cfg.schedule == "in_memory")
    stream = load_corpus(cfg.data.corpus, tok, data_dir=cfg.paths.data_dir, limit_docs=cfg.data.limit_docs,
                         synthetic_tokens=cfg.data.synthetic_tokens, seed=tr.seed)
    batch, seq = tr.batch_size, cfg.seq_len
    optim = optim_config(cfg)
    schedule = cfg.schedule
    if schedule not in ("fuyou", "zero_infinity", "in_memory"):
        raise ValueError(f"schedule must be fuyou, zero_infinity or in_memory, not {schedule!r}")
    log.info("model: %.1fM parameters, %d layers, hidden %d; schedule=%s precision=%s; clip=%s (option %s)",
             mcfg.num_params() / 1e6, mcfg.layers, mcfg.hidden, schedule, tr.precision, optim.clip_grad_norm,
             f"c: speculate-then-validate, a binding clip's exact update {cfg.offload.clip_overlap}"
             if optim.clip_grad_norm and schedule == "fuyou" else
             ("none" if not optim.clip_grad_norm else "serial clip after backward"))
    logger = MetricLogger.from_config(run_dir, cfg.logger)
    info = write_run_info(run_dir, extra={"schedule": cfg.schedule})
    prediction = None
    profiling_step = 0
    if schedule == "in_memory":
        reserve = reserve_bytes(cfg, rss_start)
        need = 16 * mcfg.num_params() + reserve  # fp32 weights, gradients, Adam m and v
        if need > parse_bytes(cfg.memory.host_budget):
            raise HostBudgetError(f"in_memory needs at least {need / 2**30:.2f} GiB (16 B/parameter for weights, "
                                  f"gradients, Adam m and v, plus memory.reserve {reserve / 2**30:.2f} GiB) but "
                                  f"memory.host_budget={cfg.memory.host_budget}; use schedule=fuyou")
        trainer = InMemoryTrainer(model, optim, tr.precision, _device(tr.device))
        ckpt = CheckpointManager(run_dir, keep_last=tr.keep_last_checkpoints)
        path = ckpt.resolve_resume(cfg.resume)
        if path is not None:
            state = load_checkpoint(path)
            trainer.load_state(state)
            restore_rng_state(state["rng"])
        save_every = tr.checkpoint_every_steps or 1
    else:
        ec = engine_config(cfg, mcfg, rss_start)
        state_dir = Path(cfg.offload.dir).expanduser() / cfg.name if cfg.offload.dir else run_dir / "offload"
        plans, prof, floors, profiling_step = make_plans(cfg, mcfg, ec, optim, batch, seq, state_dir)
        trainer = OffloadEngine(mcfg, ec, optim, state_dir=state_dir, run_dir=run_dir, plans=plans, batch=batch, seq=seq)
        has_profile = bool(floors)
        log.info("offload state: %.2f GiB in %s; staging pool %.2f GiB of memory.host_budget; prefetch depth %d; optimizer chunk %d; "
                 "gradients for replay on %s; plan: %s", trainer.state_bytes() / 2**30, state_dir,
                 ec.host_budget / 2**30, ec.prefetch_depth, ec.opt_chunk_elems, trainer.grad_tier, _plan_summary(plans))
        if floors:
            log.info("measured floors: %s", {k: f"{v:.3g}" for k, v in floors.items()})
        trainer.open(model, resume=cfg.resume)
        if trainer.step:
            log.info("resumed from committed step %d (state checksums verified: %s)", trainer.step, ec.verify_on_resume)
    del model
    start = trainer.step
    rows = []
    bar = progress(range(start + 1, tr.max_steps + 1), total=tr.max_steps - start, desc=schedule,
                   enabled=tr.progress_bar)
    try:
        for step in bar:
            tokens, targets = batch_for_step(stream, step, batch, seq, tr.seed)
            m = trainer.train_step(tokens, targets)
            if schedule != "in_memory" and profiling_step:
                # two profiling steps: the first of a process pays one-off warm-up costs
                m["profiling_step"] = 1
                profiling_step -= 1
            if schedule != "in_memory" and has_profile and not profiling_step and not m.get("profiling_step"):
                m["predicted_step_s"] = predicted(trainer, prof, step_schedule(trainer, m), batch, seq).total_s
                m["predicted_schedule"] = step_schedule(trainer, m)
            if schedule != "in_memory" and m.get("profiling_step") and (not profiling_step or step == tr.max_steps):
                profiling_step = 0
                plans, prediction = replan(trainer, prof, m, optim, batch, seq)
                log.info("profiling step: %.3g FLOP/s; plan for the next steps: %s (predicted %.3fs/step, %s)",
                         prof.flops_per_s, _plan_summary(plans), prediction.total_s,
                         step_schedule(trainer, clip_binds=m.get("clip_coef", 1.0) < 1.0))
            m["tokens_per_s"] = m["tokens"] / m["step_s"]
            m["peak_rss_bytes"] = peak_rss_bytes()
            rows.append(m)
            if step % tr.log_every_steps == 0 or step == tr.max_steps:
                logger.log(step, m)
            if schedule == "in_memory" and (step % save_every == 0 or step == tr.max_steps):
                ckpt.save(step, {**trainer.state(), "rng": capture_rng_state(), "config": OmegaConf.to_container(cfg, enum_to_str=True)})
    finally:
        logger.close()
        if schedule != "in_memory":
            trainer.close()
    summary = _summary(rows, trainer.step, schedule)
    summary["rss_at_start_bytes"] = rss_start
    if rows and cfg.get("plot_loss", True):
        _plot_losses(run_dir, rows, start)
    info.finish(summary={k: v for k, v in summary.items() if k != "losses"})
    (run_dir / "summary.json").write_text(__import__("json").dumps(summary, indent=2))
    if rows:
        log.info("step time: measured median %.3fs vs predicted %s; %.0f tokens/s; peak RSS %.0f MiB "
                 f"({rss_start / 2**20:.0f} MiB at start, before the model); "
                 "SSD per step read %s (analytic %s) write %s (analytic %s)",
                 summary["median_step_s"],
                 f"{summary['predicted_step_s']:.3f}s (measured {summary['predicted_rows_median_step_s']:.3f}s on the "
                 f"same steps: error {summary['prediction_error']:+.1%}, no fitted term)"
                 if summary.get("predicted_step_s") else "n/a",
                 summary["tokens_per_s"], summary["peak_rss_bytes"] / 2**20, summary.get("ssd_read_bytes"),
                 summary.get("expected_ssd_read_bytes"), summary.get("ssd_write_bytes"),
                 summary.get("expected_ssd_write_bytes"))
    return summary


def committed_params(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of the last committed step of an offload run, as a ``GPT`` state dict."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    run_dir = Path(run_dir)
    _, mcfg, _ = build_model(cfg.model, cfg.trainer.seed, materialize=False)
    ec = engine_config(cfg, mcfg)
    state_dir = Path(cfg.offload.dir).expanduser() / cfg.name if cfg.offload.dir else run_dir / "offload"
    eng = OffloadEngine(mcfg, ec, optim_config(cfg), state_dir=state_dir, run_dir=run_dir,
                        batch=cfg.trainer.batch_size, seq=cfg.seq_len)
    try:
        eng.open(resume="auto")
        from .engine import read_unit_params

        return read_unit_params(eng)
    finally:
        eng.close()


def _plot_losses(run_dir: Path, rows: list[dict], start: int) -> None:
    """loss.png: the loss curve and tokens/s of this invocation (metrics.jsonl holds every run's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(start + 1, start + 1 + len(rows)))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(steps, [r["loss"] for r in rows])
    ax[0].set(xlabel="step", ylabel="loss", title="training loss")
    ax[1].plot(steps, [r["tokens_per_s"] for r in rows])
    ax[1].set(xlabel="step", ylabel="tokens/s", title="throughput")
    fig.subplots_adjust(wspace=0.3, bottom=0.18)
    fig.savefig(run_dir / "loss.png", dpi=70)
    plt.close(fig)


def _plan_summary(plans: list[BlockPlan]) -> str:
    from collections import Counter

    c = Counter((p.ckpt_tier, p.cached, p.cache_tier) for p in plans)
    return "; ".join(f"{n} x [ckpt {ck}, cache {list(g) or 'none'}@{t}]" for (ck, g, t), n in c.items())


def _summary(rows: list[dict], step: int, schedule: str) -> dict[str, Any]:
    if not rows:
        return {"step": step, "schedule": schedule}
    steady = [r for r in rows if not r.get("profiling_step")][1:] or rows[1:] or rows  # drop warm-up steps
    med = statistics.median(r["step_s"] for r in steady)
    preds = [r for r in steady if r.get("predicted_step_s")]
    pred = statistics.median(r["predicted_step_s"] for r in preds) if preds else None
    out = {
        "step": step, "schedule": schedule, "final_loss": rows[-1]["loss"], "first_loss": rows[0]["loss"],
        "median_step_s": med, "tokens_per_s": rows[-1]["tokens"] / med,
        "predicted_step_s": pred,
        "predicted_rows_median_step_s": statistics.median(r["step_s"] for r in preds) if preds else None,
        "prediction_error": statistics.median(r["predicted_step_s"] / r["step_s"] - 1 for r in preds) if preds else None,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rows),
        "median_compute_s": statistics.median(r["compute_s"] for r in steady),
        "losses": [r["loss"] for r in rows],
    }
    for k in ("ssd_read_bytes", "ssd_write_bytes", "expected_ssd_read_bytes", "expected_ssd_write_bytes",
              "activation_ssd_bytes", "expected_activation_ssd_bytes", "activation_host_bytes",
              "expected_activation_host_bytes", "host_pool_peak_bytes", "rolled_back"):
        if k in rows[-1]:
            out[k] = rows[-1][k]
    out["wall_clock_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return out


__all__ = ["run", "parse_bytes", "build_model", "GPT"]
