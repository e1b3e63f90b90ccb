"""The word-level CRF against brute-force enumeration, and its masking contract."""

from __future__ import annotations

import itertools

import pytest
import torch

from joint_bert_nlu.crf import LinearChainCRF


def _brute_force(crf, emissions, length):
    """All tag sequences of one sentence: (log Z, best path, score function)."""
    k = crf.num_tags

    def score(path):
        s = crf.start[path[0]] + crf.end[path[-1]]
        s = s + sum(emissions[n, t] for n, t in enumerate(path))
        s = s + sum(crf.transitions[a, b] for a, b in zip(path[:-1], path[1:]))
        return s

    paths = list(itertools.product(range(k), repeat=length))
    scores = torch.stack([score(p) for p in paths])
    return torch.logsumexp(scores, 0), list(paths[int(scores.argmax())]), score


@pytest.fixture
def case():
    torch.manual_seed(0)
    crf = LinearChainCRF(3)
    with torch.no_grad():  # larger than the init range, so transitions matter for the argmax
        crf.transitions.normal_(0, 1.5)
        crf.start.normal_(0, 1.0)
        crf.end.normal_(0, 1.0)
    emissions = torch.randn(3, 4, 3, dtype=torch.float64).float()
    lengths = [4, 2, 1]
    mask = torch.tensor([[n < L for n in range(4)] for L in lengths])
    tags = torch.tensor([[0, 2, 1, 1], [2, 2, -100, -100], [1, -100, -100, -100]])
    return crf, emissions, mask, tags, lengths


def test_partition_nll_and_viterbi_match_brute_force(case):
    crf, emissions, mask, tags, lengths = case
    log_z = crf.log_partition(emissions, mask)
    nll = crf.neg_log_likelihood(emissions, tags, mask)
    paths = crf.decode(emissions, mask)
    for b, length in enumerate(lengths):
        bz, best, score = _brute_force(crf, emissions[b, :length], length)
        torch.testing.assert_close(log_z[b], bz, rtol=1e-5, atol=1e-5)
        gold = tags[b, :length].tolist()
        torch.testing.assert_close(nll[b], bz - score(gold), rtol=1e-5, atol=1e-5)
        assert paths[b] == best
    assert [len(p) for p in paths] == lengths


def test_probabilities_sum_to_one(case):
    crf, emissions, mask, _, _ = case
    length = 3
    total = sum(torch.exp(-crf.neg_log_likelihood(emissions[:1, :length], torch.tensor([p]), mask[:1, :length]))
                for p in itertools.product(range(3), repeat=length))
    torch.testing.assert_close(total, torch.ones(1), rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_scores(case):
    crf, emissions, mask, tags, _ = case
    noisy = emissions.clone()
    noisy[~mask] = 100.0  # garbage at padded positions
    torch.testing.assert_close(crf.neg_log_likelihood(noisy, tags, mask), crf.neg_log_likelihood(emissions, tags, mask))
    assert crf.decode(noisy, mask) == crf.decode(emissions, mask)


def test_bad_inputs():
    crf = LinearChainCRF(3)
    e = torch.zeros(1, 3, 3)
    with pytest.raises(ValueError, match="left-packed"):
        crf.decode(e, torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="emissions must be"):
        crf.decode(torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"tags at real word positions"):
        crf.neg_log_likelihood(e, torch.tensor([[0, 3, 0]]), torch.ones(1, 3, dtype=torch.bool))


def test_empty_rows_give_zero_and_empty_paths():
    crf = LinearChainCRF(2)
    e = torch.randn(2, 2, 2)
    mask = torch.tensor([[True, True], [False, False]])
    nll = crf.neg_log_likelihood(e, torch.zeros(2, 2, dtype=torch.long), mask)
    assert nll[1] == 0 and crf.decode(e, mask)[1] == []
