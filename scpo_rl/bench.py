"""Side-by-side throughput: environment steps per second, training included (one env step + one
gradient step), of our SAC, our SCPO and Stable-Baselines3's SAC with the same networks (256-256 ReLU
actor and twin critics), batch 256, learning rates, replay and single env, interleaved in one process
(``common.bench.compare``: warm-up, repeats, median).

``python -m scpo_rl.bench --env Hopper-v5 --steps 300 --repeats 5`` writes ``reports/scpo_rl/benchmark.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from common.bench import compare, format_bytes, peak_rss_bytes
from common.runinfo import hardware_summary
from scpo_rl.algorithm import AgentConfig
from scpo_rl.loop import RLTrainer, RunConfig


def our_trainer(algo: str, env_id: str, warmup_steps: int, run_dir: Path, batch: int, hidden: tuple[int, ...]) -> RLTrainer:
    cfg = RunConfig(env=env_id, seed=0, total_steps=10**9, learning_starts=warmup_steps, batch_size=batch,
                    buffer_size=1_000_000, eval_every=10**9, checkpoint_every=10**9, log_every=10**9,
                    progress_bar=False, num_threads=None, agent=AgentConfig(algo=algo, hidden=hidden))
    trainer = RLTrainer(cfg, run_dir)
    for _ in range(warmup_steps):  # fill the warm-up: the timed steps all include an update
        trainer.train_step()
    return trainer


def sb3_sac(env_id: str, warmup_steps: int, batch: int, hidden: tuple[int, ...]):
    import gymnasium as gym
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", gym.make(env_id), learning_rate=3e-4, buffer_size=1_000_000, learning_starts=warmup_steps,
                batch_size=batch, tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1,
                policy_kwargs={"net_arch": list(hidden)}, device="cpu", seed=0, verbose=0)
    model.learn(total_timesteps=warmup_steps)
    return model


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m scpo_rl.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="Hopper-v5")
    ap.add_argument("--steps", type=int, default=300, help="env steps (each with one update) per timed call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup-steps", type=int, default=300, help="replay warm-up before timing (no updates)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="reports/scpo_rl")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    hidden = tuple(args.hidden)
    with tempfile.TemporaryDirectory() as tmp:
        ours_sac = our_trainer("sac", args.env, args.warmup_steps, Path(tmp) / "sac", args.batch, hidden)
        ours_scpo = our_trainer("scpo", args.env, args.warmup_steps, Path(tmp) / "scpo", args.batch, hidden)
        sb3 = sb3_sac(args.env, args.warmup_steps, args.batch, hidden)
        n = args.steps

        def run_ours(trainer):
            return lambda: [trainer.train_step() for _ in range(n)]

        timings = compare({
            "ours_sac": run_ours(ours_sac), "ours_scpo": run_ours(ours_scpo),
            "sb3_sac": lambda: sb3.learn(total_timesteps=n, reset_num_timesteps=False),
        }, warmup=1, repeats=args.repeats, items_per_call=n)
    sps = {k: t.throughput for k, t in timings.items()}
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware_summary(),
        "torch_threads": args.threads, "env": args.env, "steps_per_call": n, "repeats": args.repeats,
        "batch": args.batch, "hidden": list(hidden), "steps_per_second": sps,
        "ours_sac_over_sb3_sac": sps["ours_sac"] / sps["sb3_sac"],
        "scpo_cost_over_our_sac": sps["ours_sac"] / sps["ours_scpo"],
        "peak_rss_process": format_bytes(peak_rss_bytes()),
        "timings": {k: t.as_dict() for k, t in timings.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    md = [f"# scpo_rl benchmark ({result['date']})", "", f"Hardware: {result['hardware']}; torch threads "
          f"{args.threads}; {args.env}; nets {list(hidden)}; batch {args.batch}; {n} env steps (+{n} updates) "
          f"per call, median of {args.repeats}, interleaved.", "",
          "| implementation | env steps/s (training included) | ratio |", "|---|---|---|",
          f"| SB3 SAC | {sps['sb3_sac']:.1f} | 1.00 |",
          f"| ours SAC | {sps['ours_sac']:.1f} | {result['ours_sac_over_sb3_sac']:.2f}x SB3 |",
          f"| ours SCPO | {sps['ours_scpo']:.1f} | SCPO costs {result['scpo_cost_over_our_sac']:.2f}x our SAC |", "",
          f"Peak RSS of the whole benchmark process: {result['peak_rss_process']}.", ""]
    (out / "benchmark.md").write_text("\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
