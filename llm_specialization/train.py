"""Hydra shell: python -m llm_specialization.train
task=domain_ladder|knn_lm|kg_fusion|personalization|rec_tuning method=... model=smollm2|tiny"""

from __future__ import annotations

import builtins
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from common.distributed import is_main_process
from common.hydra_utils import report_user_errors, run_dir_from
from llm_specialization.run import (
    ALL_METHODS,
    run_domain_ladder,
    run_kg_fusion,
    run_knn_lm,
    run_personalization,
    run_rec_tuning,
)
from llm_specialization.tuning import TrainingProtocol


def _print_on_rank0(*args, **kwargs) -> None:
    """Under torchrun every rank has the results; rank 0 prints them."""
    if is_main_process():
        builtins.print(*args, **kwargs)


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> None:
    run_dir = run_dir_from(cfg)
    print = _print_on_rank0
    task = cfg.task.name
    if task == "domain_ladder":
        methods = list(cfg.method) if OmegaConf.is_list(cfg.method) else [str(cfg.method)]
        methods = list(ALL_METHODS) if methods == ["all"] else methods
        t = cfg.task
        training = OmegaConf.to_container(t.training, enum_to_str=True)
        protocol = TrainingProtocol(**{**training, "lr_grid": training["lr_grid"], "shots": tuple(training["shots"])})
        results = run_domain_ladder(
            methods=methods, model=cfg.model, run_dir=run_dir, trainer_cfg=cfg.trainer, logger_cfg=cfg.logger,
            resume=cfg.resume, data_dir=cfg.paths.data_dir, n_test=t.n_test, max_tokens=t.max_tokens,
            use_encoder=t.use_encoder, seed=cfg.trainer.seed, show_progress=cfg.trainer.progress_bar,
            protocol=protocol, draws=t.draws, chat_rungs=tuple(str(m) for m in t.chat_rungs))
        for r in results:
            what = f"{r.variant}, draw/seed {r.draw}" + (f", n={r.n_train}, lr={r.lr:g}" if r.lr else "")
            print(f"{r.rung:36s} acc {r.accuracy:.4f}  macro-F1 {r.macro_f1:.4f}  trainable {r.trainable_params:,}"
                  f"  ({what})")
    elif task == "knn_lm":
        t = cfg.task
        summary = run_knn_lm(model=cfg.model, run_dir=run_dir, data_dir=cfg.paths.data_dir,
                             store_tokens=t.store_tokens, n_eval_tokens=t.eval_tokens, window=t.window,
                             stride=t.stride, sizes=list(t.sizes), ks=list(t.ks), lams=list(t.lambdas),
                             temperatures=list(t.temperatures), seed=cfg.trainer.seed,
                             show_progress=cfg.trainer.progress_bar, resume=cfg.resume,
                             n_valid_tokens=t.valid_tokens)
        print(f"LM test ppl {summary['lm_ppl']:.3f}; kNN-LM at the settings chosen on validation {summary['best']}")
    elif task == "kg_fusion":
        t = cfg.task
        results = run_kg_fusion(run_dir=run_dir, trainer_cfg=cfg.trainer, logger_cfg=cfg.logger, resume=cfg.resume,
                                data_dir=cfg.paths.data_dir, kg_dim=t.kg_dim, kg_epochs=t.kg_epochs,
                                encoder_lr=t.encoder_lr, adapter_lr=t.adapter_lr,
                                train_negatives=t.train_negatives, max_train=t.max_train,
                                models=tuple(t.models), seed=cfg.trainer.seed, seeds=t.seeds,
                                lp_triples=t.lp_triples)
        for r in results:
            lp = f"  Hits@10 {r.hits10:.3f}  MR {r.mr:.2f}" if r.hits10 is not None else ""
            print(f"{r.model:12s} seed {r.seed}  acc {r.accuracy:.4f}  AUC {r.auc:.4f}{lp}  "
                  f"trainable {r.trainable_params:,}")
    elif task == "personalization":
        t = cfg.task
        rows = run_personalization(run_dir=run_dir, trainer_cfg=cfg.trainer, logger_cfg=cfg.logger, resume=cfg.resume,
                                   cache_dir=t.cache_dir, model=cfg.model, llm_users=t.llm_users, max_len=t.max_len,
                                   lr=t.lr, seed=cfg.trainer.seed, sasrec_training=t.sasrec_training,
                                   show_progress=cfg.trainer.progress_bar)
        for r in rows:
            print(r)
    elif task == "rec_tuning":
        t = cfg.task
        movielens = None
        if t.synthetic:
            from llm_specialization.rectune import synthetic_ratings

            movielens = synthetic_ratings(seed=cfg.trainer.seed)
        rows = run_rec_tuning(run_dir=run_dir, trainer_cfg=cfg.trainer, logger_cfg=cfg.logger, resume=cfg.resume,
                              cache_dir=t.cache_dir, model=cfg.model, build=t.build, template=t.template,
                              history=t.history, max_records=t.max_records, n_train=t.n_train, n_valid=t.n_valid,
                              n_test=t.n_test, lr=t.lr, lora_r=t.lora_r, lora_alpha=t.lora_alpha,
                              lora_dropout=t.lora_dropout, train_on_inputs=t.train_on_inputs,
                              eval_batch_size=t.eval_batch_size, seed=cfg.trainer.seed, movielens=movielens,
                              shots=tuple(t.shots) if t.shots else None, seeds=t.seeds, steps=t.steps,
                              eval_every_steps=t.eval_every_steps)
        for r in rows:
            print(f"{r['model']:48s} n={r['n_train']:<4d} seed {r['seed']}  AUC {r['auc']:.4f}  "
                  f"trainable {r['trainable_params']:,}  ({r['test_users']} test users)")
    else:
        raise SystemExit(f"error: unknown task {task!r}")


if __name__ == "__main__":
    main()
