"""``torchrun --nproc_per_node 2 -m vocab_distill.train experiment=smoke`` on CPU (gloo): every stage trains
under DDP (the mixed-vocabulary stages and one-direction projections leave parameters unused, which DDP used
to reject), rank 0 alone writes, and the sharded held-out evaluations equal the single-process ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.common.torchrun import REPO, files_under, run_torchrun

EVAL_SCRIPT = r"""
import json, os, sys, torch
from hydra import compose, initialize_config_dir
from transformers import BertForMaskedLM
import common.config
from common.distributed import rank_world
from vocab_distill.model import MixedVocabMLM, load_teacher_mlm
from vocab_distill.pretrain import eval_mixed_mlm, eval_student_mlm
from vocab_distill.train import build_pipeline

out, run = sys.argv[1], sys.argv[2]
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose("config", overrides=["experiment=smoke", "paths.output_dir=" + os.path.dirname(run),
                                       "resume=auto"])
pipe = build_pipeline(cfg, run)
pipe.prepare_data()
torch.manual_seed(0)
teacher = MixedVocabMLM(load_teacher_mlm(run + "/teacher/teacher_mlm"), pipe.student_tok.get_vocab_size(), 16)
student = BertForMaskedLM.from_pretrained(run + "/stage2_scratch_d16/export")
sharded = rank_world()[1] > 1
res = {{"mixed": eval_mixed_mlm(teacher.eval(), pipe.codec, pipe.eval_mixed, p=0.5, batch_size=4, sharded=sharded),
       "student": eval_student_mlm(student.eval(), pipe.s_codec, pipe._encoded(pipe.s_codec)[1], batch_size=4,
                                   sharded=sharded)}}
with open(out + "." + os.environ.get("RANK", "single"), "w") as f:
    json.dump(res, f)
"""


@pytest.mark.slow
def test_torchrun_smoke_only_rank0_writes_and_sharded_mlm_scores_are_exact(tmp_path):
    out = tmp_path / "out"
    r = run_torchrun("vocab_distill.train", ["experiment=smoke", f"paths.output_dir={out}"], tmp_path, watch=out)
    assert r.returncode == 0, r.output[-3000:]
    assert r.rank_writes == [], r.rank_writes
    run = out / "vocab_distill_smoke"
    files = files_under(run)
    for stage in ("teacher/adapt", "stage1_d16", "stage2_dual_proj_d16", "stage2_scratch_d16",
                  "stage2_logit_kd_d16", "stage2_hidden_kd_d16"):
        assert f"{stage}/metrics.jsonl" in files and f"{stage}/run_info.json" in files, stage
        # one writer: rank 0 (the teacher's adaptation opens one TensorBoard file per chunk, all in rank 0)
        writers = {f.split(".")[-2] for f in files if f.startswith(f"{stage}/tb/")}
        assert len(writers) == 1, (stage, writers)
    assert "teacher/teacher_mlm/config.json" in files and "stage1_d16/export/student_embeddings.safetensors" in files
    assert "teacher/curve.json" in files and "teacher/teacher.json" in files
    results = json.loads((run / "results.json").read_text())
    assert set(results["finetune"]) == {"teacher", "dual_proj_d16", "scratch_d16", "logit_kd_d16", "hidden_kd_d16"}
    assert r.output.count('"finetune": {') == 1  # rank 0 prints the summary, rank 1 does not

    # the held-out MLM scores of the finished models: batches of 4 dealt to 2 ranks (masking draws replayed
    # on every rank) against one process scoring every batch
    script = tmp_path / "eval.py"
    script.write_text(EVAL_SCRIPT.format(conf=str(REPO / "vocab_distill" / "conf")))
    scores = tmp_path / "scores"
    r2 = run_torchrun(str(script), [str(scores), str(run)], tmp_path, module_flag=False)
    assert r2.returncode == 0, r2.output[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    single = subprocess.run([sys.executable, str(script), str(scores), str(run)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    got = {k: json.loads((tmp_path / f"scores.{k}").read_text()) for k in ("0", "1", "single")}
    assert got["0"] == got["1"] == got["single"]
    assert got["single"]["mixed"]["acc_student_vocab"] >= 0 and got["single"]["student"]["mlm_loss"] > 0
