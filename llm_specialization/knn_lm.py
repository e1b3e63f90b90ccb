"""Retrieval-based generation as a kNN-LM (Khandelwal et al. 2020) over a causal LM.

Keys are the input of the last layer's feed-forward block after its normalisation (for LLaMA: the output
of ``layers[-1].post_attention_layernorm``), values the next token. At test time

    p(y) = lam * p_kNN(y) + (1 - lam) * p_LM(y),   p_kNN(y) ∝ sum_{i in kNN(q), v_i = y} exp(-d_i / T)

with exact squared L2 distances d_i = |q|^2 - 2 q.k + |k|^2 computed by matrix products in chunks.

The hyper-parameters (datastore size, k, lambda, T) are chosen on a validation stream of held-out training
text (:func:`select`); the test stream is scored only at the chosen settings (:func:`select_and_test`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint, save_checkpoint
from common.progress import progress


@dataclass
class Encoded:
    """Every scored position of a token stream: its key, the next token, and log p_LM(next token)."""

    keys: torch.Tensor  # (N, d) float32
    values: torch.Tensor  # (N,) long
    lm_logp: torch.Tensor  # (N,) float32


def _ffn_input_module(model):
    layers = model.model.layers if hasattr(model, "model") else model.layers
    return layers[-1].post_attention_layernorm


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Starts of the sliding windows, enough to reach the end of the stream."""
    if n_tokens < 2:
        return []
    starts = [0]
    while starts[-1] + window < n_tokens:
        starts.append(starts[-1] + stride)
    return starts


@torch.no_grad()
def encode_stream(model, ids: torch.Tensor, window: int = 512, stride: int = 256, show_progress: bool = True,
                  parts_dir: str | Path | None = None, windows_per_part: int = 50) -> Encoded:
    """Slide windows over a 1-D token stream and predict every token after the first exactly once, each
    from the window that gives it the most context seen so far (at least window - stride tokens after
    the first window).

    With ``parts_dir``, every ``windows_per_part`` windows are saved there as one part (a 300k-token
    datastore takes hours on a CPU), and a later call with the same stream and windows continues after
    the last saved part; the result is the same as one uninterrupted call.
    """
    starts = window_starts(len(ids), window, stride)
    parts = _Parts(parts_dir, ids, window, stride) if parts_dir is not None else None
    keys, values, lps, covered = parts.load() if parts else ([], [], [], 0)
    done = len(keys)  # one entry per window, so this counts the windows read back from parts
    captured = {}
    hook = _ffn_input_module(model).register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    try:
        for i in progress(range(done, len(starts)), desc="encode", enabled=show_progress, unit="win",
                          initial=done, total=len(starts)):
            s = starts[i]
            chunk = ids[s: s + window]
            logits = model(input_ids=chunk.unsqueeze(0)).logits[0, :-1].float()  # position t predicts s+t+1
            sel = slice(max(covered - s, 0), len(chunk) - 1)
            tgt = chunk[1:][sel]
            keys.append(captured["h"][0, sel].float())
            values.append(tgt)
            lps.append(logits[sel].log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1))
            covered = s + len(chunk) - 1
            if parts and ((i + 1) % windows_per_part == 0 or i + 1 == len(starts)):
                parts.save(keys, values, lps, covered)
    finally:
        hook.remove()
    return Encoded(torch.cat(keys), torch.cat(values), torch.cat(lps))


class _Parts:
    """Saved windows of one encoding: ``part_<first window>.pt`` files plus ``meta.json`` naming the stream
    (a hash of its ids) and the windowing, so parts of another stream are never mixed in."""

    def __init__(self, folder: str | Path, ids: torch.Tensor, window: int, stride: int):
        self.dir = Path(folder)
        digest = hashlib.sha256(ids.to(torch.int64).numpy().tobytes()).hexdigest()
        self.meta = {"ids_sha256": digest, "n_tokens": len(ids), "window": window, "stride": stride}
        self.saved = 0  # windows already on disk

    def load(self) -> tuple[list, list, list, int]:
        keys, values, lps, covered = [], [], [], 0
        meta = self.dir / "meta.json"
        if meta.is_file() and json.loads(meta.read_text()) == self.meta:
            for path in sorted(self.dir.glob("part_*.pt")):
                part = load_checkpoint(path)
                if part["first"] != len(keys):  # a gap (a part deleted by hand): keep what is contiguous
                    break
                keys += part["keys"]
                values += part["values"]
                lps += part["lps"]
                covered = part["covered"]
        else:
            for path in self.dir.glob("part_*.pt"):
                path.unlink()
            self.dir.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(self.meta))
        self.saved = len(keys)
        return keys, values, lps, covered

    def save(self, keys: list, values: list, lps: list, covered: int) -> None:
        first = self.saved
        save_checkpoint(self.dir / f"part_{first:07d}.pt", {"first": first, "keys": keys[first:],
                                                             "values": values[first:], "lps": lps[first:],
                                                             "covered": covered})
        self.saved = len(keys)


@torch.no_grad()
def nearest(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int | None = None,
            max_chunk_bytes: int = 512 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest keys by squared L2 distance: (distances ascending, indices), each (Q, k).

    Queries go in chunks whose (chunk, N) float32 distance matrix fits ``max_chunk_bytes`` (``chunk`` fixes
    the count instead): a fixed 4,096-query chunk against 300k keys held ~15 GB of temporaries. The matrix is
    built in one buffer, |k|^2 - 2 q.k by ``addmm`` and then |q|^2 in place."""
    k = min(k, keys.shape[0])
    if chunk is None:
        chunk = max(1, max_chunk_bytes // (4 * max(keys.shape[0], 1)))
    k_sq = (keys * keys).sum(-1)  # (N,)
    dists, idx = [], []
    for i in range(0, queries.shape[0], chunk):
        q = queries[i: i + chunk]
        d = torch.addmm(k_sq, q, keys.T, alpha=-2.0)  # (q, N)
        d.add_((q * q).sum(-1, keepdim=True))
        top = d.topk(k, dim=-1, largest=False)
        dists.append(top.values.clamp(min=0))
        idx.append(top.indices)
    return torch.cat(dists), torch.cat(idx)


def knn_prob_of(targets: torch.Tensor, dists: torch.Tensor, neighbour_values: torch.Tensor, k: int,
                temperature: float) -> torch.Tensor:
    """p_kNN(target) per query from its (sorted) neighbours, using the first k of them."""
    w = torch.softmax(-dists[:, :k] / temperature, dim=-1)  # (Q, k)
    return (w * (neighbour_values[:, :k] == targets.unsqueeze(-1))).sum(-1)


def knn_distribution(dists: torch.Tensor, neighbour_values: torch.Tensor, k: int, temperature: float,
                     vocab: int) -> torch.Tensor:
    """The full p_kNN over the vocabulary, (Q, V): rows sum to 1."""
    w = torch.softmax(-dists[:, :k] / temperature, dim=-1)
    return torch.zeros(dists.shape[0], vocab).scatter_add_(1, neighbour_values[:, :k], w)


def interpolate_logp(lm_logp: torch.Tensor, knn_p: torch.Tensor, lam: float) -> torch.Tensor:
    """log(lam * p_kNN + (1 - lam) * p_LM), exactly the LM's log-probability when lam = 0."""
    if lam == 0:
        return lm_logp
    if lam == 1:
        return knn_p.log()
    return torch.logaddexp(math.log(lam) + knn_p.clamp(min=1e-30).log(), math.log(1 - lam) + lm_logp)


def perplexity(logp: torch.Tensor) -> float:
    return math.exp(-float(logp.mean()))


@dataclass
class Sweep:
    rows: list[dict]

    def best(self) -> dict:
        return min(self.rows, key=lambda r: r["ppl"])


def sweep(test: Encoded, store: Encoded, sizes: list[int], ks: list[int], lams: list[float],
          temperatures: list[float]) -> Sweep:
    """Perplexity over datastore size x k x lambda x T, reusing one neighbour search per size."""
    rows = []
    for n in sizes:
        n = min(n, len(store.values))
        dists, idx = nearest(test.keys, store.keys[:n], max(ks))
        vals = store.values[:n][idx]
        for k in ks:
            for t in temperatures:
                p = knn_prob_of(test.values, dists, vals, k, t)
                for lam in lams:
                    rows.append({"datastore": n, "k": k, "temperature": t, "lambda": lam,
                                 "ppl": perplexity(interpolate_logp(test.lm_logp, p, lam))})
    return Sweep(rows)


def select(rows: list[dict]) -> dict[int, dict]:
    """Per datastore size, the sweep row (k, T, lambda) of lowest perplexity; first wins a tie."""
    best: dict[int, dict] = {}
    for r in rows:
        if r["datastore"] not in best or r["ppl"] < best[r["datastore"]]["ppl"]:
            best[r["datastore"]] = r
    return best


def token_logp(test: Encoded, store: Encoded, datastore: int, k: int, temperature: float, lam: float
               ) -> torch.Tensor:
    """log p(next token) of every test position under the kNN-LM with these settings."""
    n = min(datastore, len(store.values))
    dists, idx = nearest(test.keys, store.keys[:n], k)
    p = knn_prob_of(test.values, dists, store.values[:n][idx], k, temperature)
    return interpolate_logp(test.lm_logp, p, lam)


def block_nll(logp: torch.Tensor, block: int = 256) -> list[float]:
    """Mean negative log-likelihood of consecutive blocks of ``block`` tokens (the last, shorter one dropped):
    the units of a block bootstrap, since neighbouring tokens are not independent."""
    n = len(logp) // block
    return (-logp[: n * block].view(n, block).mean(-1)).tolist()


def select_and_test(valid: Encoded, test: Encoded, store: Encoded, sizes: list[int], ks: list[int],
                    lams: list[float], temperatures: list[float], default: tuple[int, float, float] = (1024, 0.25, 1.0),
                    block: int = 256) -> dict:
    """The sweep on ``valid`` (held-out training text), the settings it chooses per datastore size and
    overall, and the test perplexity at those settings only (plus the LM alone and the paper's default
    k = 1024, lambda = 0.25, T = 1 at the largest store, fixed in advance). The test stream plays no part in
    any choice."""
    rows = sweep(valid, store, sizes, ks, lams, temperatures).rows
    chosen = select(rows)
    overall = min(chosen.values(), key=lambda r: r["ppl"])
    per_size, best_logp = [], None
    for n, r in sorted(chosen.items()):
        logp = token_logp(test, store, n, r["k"], r["temperature"], r["lambda"])
        per_size.append({"datastore": n, "k": r["k"], "temperature": r["temperature"], "lambda": r["lambda"],
                         "valid_ppl": r["ppl"], "test_ppl": perplexity(logp)})
        if r is overall:
            best_logp = logp
    k, lam, t = default
    largest = max(chosen)
    default_logp = token_logp(test, store, largest, min(k, largest), t, lam)
    best = next(c for c in per_size if c["datastore"] == overall["datastore"])
    return {"valid_rows": rows, "lm_valid_ppl": perplexity(valid.lm_logp), "lm_ppl": perplexity(test.lm_logp),
            "chosen": per_size, "best": {**best, "ppl": best["test_ppl"]},
            "default": {"datastore": largest, "k": min(k, largest), "lambda": lam, "temperature": t,
                        "test_ppl": perplexity(default_logp)},
            "block": block, "lm_block_nll": block_nll(test.lm_logp, block),
            "best_block_nll": block_nll(best_logp, block)}
