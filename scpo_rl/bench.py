"""Side-by-side throughput: environment steps per second, training included (one env step + one
gradient step), of our SAC, our SCPO and Stable-Baselines3's SAC with the same networks (256-256 ReLU
actor and twin critics), batch 256, learning rates, replay and single env, interleaved in one process
(``common.bench.compare``: warm-up, repeats, median).

``python -m scpo_rl.bench --env Hopper-v5 --steps 300 --repeats 5`` writes ``reports/scpo_rl/benchmark.{md,json}``.

``--what eval`` measures instead where vectorised environments could help: evaluation steps per second of
``evaluate.run_episodes`` with the start states one after another on one env, side by side on one env each
(the policy batched: what the evaluation does), and on gymnasium's ``SyncVectorEnv`` (which steps every env
until the last episode ends); and the share of one training step spent collecting (acting + env step),
which bounds what vectorised collection could save in training. Writes ``benchmark_eval.{md,json}``.
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


def vector_env_episodes(env_id: str, policy, episodes: int, seed: int, max_steps: int) -> list[float]:
    """The same episodes on gymnasium's SyncVectorEnv: every env is stepped until the last one ends."""
    import gymnasium as gym
    import numpy as np

    from scpo_rl.envs import make_env

    vec = gym.vector.SyncVectorEnv([lambda: make_env(env_id) for _ in range(episodes)])
    obs, _ = vec.reset(seed=[seed + k for k in range(episodes)])
    totals, active, steps = np.zeros(episodes), np.ones(episodes, dtype=bool), 0
    while active.any():
        obs, reward, terminated, truncated, _ = vec.step(policy(obs))
        steps += 1
        totals += np.where(active, reward, 0.0)
        active &= ~(terminated | truncated) & (steps < max_steps)
    vec.close()
    return totals.tolist()


def bench_eval(args, hidden: tuple[int, ...]) -> dict:
    from scpo_rl.algorithm import Agent
    from scpo_rl.envs import make_env
    from scpo_rl.evaluate import agent_policy, make_envs, run_episodes

    env = make_env(args.env)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(0)
    policy = agent_policy(Agent(obs_dim, act_dim, AgentConfig(algo="sac", hidden=hidden)))
    n, cap = args.episodes, args.eval_steps
    envs = make_envs(args.env, n)
    lengths: list[int] = []
    run_episodes(envs, policy, n, 10_000, cap, lengths)
    steps = sum(lengths)
    timings = compare({
        "one_env": lambda: run_episodes(env, policy, n, 10_000, cap),
        "side_by_side": lambda: run_episodes(envs, policy, n, 10_000, cap),
        "gym_sync_vector": lambda: vector_env_episodes(args.env, policy, n, 10_000, cap),
    }, warmup=1, repeats=args.repeats, items_per_call=steps)
    with tempfile.TemporaryDirectory() as tmp:
        k = args.steps
        collect = our_trainer("sac", args.env, 1, Path(tmp) / "c", args.batch, hidden)
        collect.cfg.learning_starts = 10**9  # from now on steps without updates: acting + env step + replay insert
        train = our_trainer("sac", args.env, args.warmup_steps, Path(tmp) / "t", args.batch, hidden)
        steps_t = compare({"collect_only": lambda: [collect.train_step() for _ in range(k)],
                           "train_step": lambda: [train.train_step() for _ in range(k)]},
                          warmup=1, repeats=args.repeats, items_per_call=k)
    sps = {name: t.throughput for name, t in {**timings, **steps_t}.items()}
    return {"what": "eval", "env": args.env, "episodes": n, "eval_max_steps": cap, "eval_steps_per_call": steps,
            "steps_per_second": sps, "side_by_side_over_one_env": sps["side_by_side"] / sps["one_env"],
            "side_by_side_over_sync_vector": sps["side_by_side"] / sps["gym_sync_vector"],
            "collection_share_of_a_training_step": sps["train_step"] / sps["collect_only"],
            "timings": {name: t.as_dict() for name, t in {**timings, **steps_t}.items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m scpo_rl.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=["train", "eval"], default="train",
                    help="train: SAC/SCPO vs SB3 steps/s; eval: batched start states vs one env vs SyncVectorEnv")
    ap.add_argument("--episodes", type=int, default=20, help="--what eval: start states per call")
    ap.add_argument("--eval-steps", type=int, default=1000, help="--what eval: steps per episode at most")
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
    if args.what == "eval":
        result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware_summary(),
                  "torch_threads": args.threads, **bench_eval(args, hidden)}
        sps = result["steps_per_second"]
        md = [f"# scpo_rl evaluation / collection benchmark ({result['date']})", "",
              f"Hardware: {result['hardware']}; torch threads {args.threads}; {args.env}; {args.episodes} start "
              f"states x at most {args.eval_steps} steps ({result['eval_steps_per_call']} env steps per call); "
              f"median of {args.repeats}, interleaved.", "",
              "| evaluation | env steps/s | ratio |", "|---|---|---|",
              f"| one env, start states one after another | {sps['one_env']:.0f} | 1.00 |",
              f"| one env per start state, policy batched (ours) | {sps['side_by_side']:.0f} | "
              f"{result['side_by_side_over_one_env']:.2f}x |",
              f"| gymnasium SyncVectorEnv | {sps['gym_sync_vector']:.0f} | "
              f"{sps['gym_sync_vector'] / sps['one_env']:.2f}x |", "",
              f"Training: collecting alone runs at {sps['collect_only']:.0f} steps/s, a full SAC step (collect + "
              f"update) at {sps['train_step']:.1f}: collection is {100 * result['collection_share_of_a_training_step']:.1f} % "
              "of a training step, the most vectorised collection could save.", ""]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "benchmark_eval.json").write_text(json.dumps(result, indent=2))
        (out / "benchmark_eval.md").write_text("\n".join(md))
        print("\n".join(md))
        return result
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
