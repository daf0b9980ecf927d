"""Fit the learned repeat score of the served scoring function (:mod:`twotower.scoring`) on a split.

Each query's pool (its distinct history items and the method's top candidates, as :func:`candidate_pool`
builds it) is one softmax: history items score ``w . f + c_score * s + bias`` over their
:func:`repeat_features` ``f``, new items ``a * s + u . g`` over the catalog's :func:`item_features` ``g``; the
target's probability is maximized (a conditional logit, L-BFGS, L2 on ``w`` and ``u``; ``a`` is kept positive).
Dividing by ``a`` leaves new items at their own score ``s`` plus a boost, as served. Fifteen numbers learned on
val decide which of the buyer's items come back and when new items beat them: per shop, per method, without a
hand-set repeat weight. Given the catalog's item vectors, new items also get ``v * h`` over their
:func:`twotower.scoring.history_similarity` ``h``, fitted in the same logit (the served ``history_similarity``
weight; a negative ``v`` is served as 0): how far an item close to one of the buyer's items should rise is then
learned together with when the buyer's own items should come back.

With ``exclude_seen`` (a shop served without its buyers' own items) history items are never in the pool: only
the new items' part (``a`` and ``u``) is fitted and the history coefficients are 0.

Example:
    >>> learned = fit_learned_score(ids, scores, history, history_scores, targets)  # doctest: +SKIP
    >>> ScoringSettings(exclude_seen=False, repeat_coefficients=learned.coefficients)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from twotower.scoring import (
    NEW_ITEM_COEFFICIENTS,
    REPEAT_FEATURES,
    History,
    best_new_items,
    candidate_pool,
    pool_similarity,
    repeat_features,
)

log = logging.getLogger(__name__)

__all__ = ["LearnedScore", "fit_learned_score"]

MIN_QUERIES = 20  # fewer queries whose target lies in the pool than this: nothing worth learning
MIN_NEW_WEIGHT = 1e-3  # floor of the new items' score weight (a split with no new-item target drives it to 0)


@dataclass(frozen=True)
class LearnedScore:
    """What :func:`fit_learned_score` learns: ``coefficients`` (the settings' ``repeat_coefficients``) and the
    ``history_similarity`` weight (0 when fitted without item vectors)."""

    coefficients: tuple[float, ...]
    history_similarity: float = 0.0


def fit_learned_score(
    candidate_ids: np.ndarray,
    candidate_scores: np.ndarray,
    history: History,
    history_scores: np.ndarray,
    targets: np.ndarray,
    *,
    features: np.ndarray | None = None,
    catalog_features: np.ndarray | None = None,
    boost_pool: int | None = None,
    exclude_seen: bool = False,
    item_vectors: np.ndarray | None = None,
    max_queries: int = 20_000,
    l2: float = 1e-3,
    seed: int = 0,
) -> LearnedScore | None:
    """The learned repeat score's coefficients (``twotower.scoring.REPEAT_COEFFICIENTS``) and history-similarity
    weight, or None when the split cannot teach one (too few queries whose target is in the pool, none of them a
    history item, or a fit that diverged).

    Inputs as :func:`twotower.scoring.rank_candidates` takes them, plus ``targets`` int64 [Q]; ``features``:
    a precomputed :func:`repeat_features` of ``history`` (else computed with ``catalog_features``, the catalog's
    :func:`item_features`, which also give new items their boost); ``boost_pool``: the settings' ``boost_pool``,
    the number of best new items the boost may reorder (as :func:`rank_candidates` does; the others are left
    out of the fit); ``exclude_seen``: history items are
    excluded (fit the new items' boost alone; None without ``catalog_features``); ``item_vectors``: the
    method's item vectors ``[N, D]``, to fit the history similarity's weight too (needs ``boost_pool``, like
    the served term). At most ``max_queries`` queries (a seeded sample) fit.
    """
    similar = item_vectors is not None and boost_pool is not None
    if exclude_seen and catalog_features is None:
        return None  # nothing to learn: the new items' order is the method's
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) > max_queries:
        rows = np.sort(np.random.default_rng(seed).choice(len(targets), max_queries, replace=False))
        candidate_ids, candidate_scores = candidate_ids[rows], candidate_scores[rows]
        history, history_scores, targets = history.take(rows), history_scores[rows], targets[rows]
        features = None if features is None else features[rows]
    pool_ids, pool, valid = candidate_pool(candidate_ids, candidate_scores, history, history_scores)
    width = history.items.shape[1]
    if exclude_seen:
        valid[:, :width] = False
    if boost_pool is not None and (catalog_features is not None or similar):  # as served: only these move
        valid[:, width:] &= best_new_items(pool_ids, pool, valid, width, boost_pool)
    hit = (pool_ids == targets[:, None]) & valid
    usable = hit.any(axis=1)
    if usable.sum() < MIN_QUERIES or not (exclude_seen or hit[:, :width].any()):
        return None
    if features is None:
        features = repeat_features(history, catalog_features)
    features = features[usable].astype(np.float64)
    history_valid = valid[usable, :width]
    # standardize over the real history items (better conditioned for L-BFGS); folded back below
    seen = features[history_valid] if history_valid.any() else np.zeros((1, features.shape[-1]))
    mean, std = seen.mean(axis=0), seen.std(axis=0) + 1e-6
    x = torch.from_numpy(np.where(history_valid[..., None], (features - mean) / std, 0.0))
    # the new candidates' catalog features (zeros without a catalog), standardized over the real candidates
    new_ids, new_valid = pool_ids[usable, width:], valid[usable, width:]
    if catalog_features is None:
        new_features = np.zeros((*new_ids.shape, len(NEW_ITEM_COEFFICIENTS)))
    else:
        new_features = catalog_features[np.maximum(new_ids, 0)].astype(np.float64)
    shown = new_features[new_valid] if new_valid.any() else np.zeros((1, len(NEW_ITEM_COEFFICIENTS)))
    new_mean, new_std = shown.mean(axis=0), shown.std(axis=0) + 1e-6
    x_new = torch.from_numpy(np.where(new_valid[..., None], (new_features - new_mean) / new_std, 0.0))
    # the history similarity of the new candidates (as served: the pool's items only), standardized likewise
    if similar:
        assert boost_pool is not None and item_vectors is not None
        h = pool_similarity(item_vectors, history.take(usable), new_ids, new_valid, boost_pool)
    else:
        h = np.zeros(new_ids.shape)
    shown_h = h[new_valid] if new_valid.any() else np.zeros(1)
    h_mean, h_std = float(shown_h.mean()), float(shown_h.std()) + 1e-6
    h_t = torch.from_numpy(np.where(new_valid, (h - h_mean) / h_std, 0.0))
    s = torch.from_numpy(np.where(valid[usable], pool[usable], 0.0))
    valid_t = torch.from_numpy(valid[usable])
    position = torch.from_numpy(hit[usable].argmax(axis=1))

    w = torch.zeros(len(REPEAT_FEATURES), dtype=torch.float64, requires_grad=True)
    u = torch.zeros(len(NEW_ITEM_COEFFICIENTS), dtype=torch.float64, requires_grad=True)
    v = torch.zeros((), dtype=torch.float64, requires_grad=similar)
    c_score = torch.ones((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    # new items' weight stays positive (their own order is the method's); starts at 1
    raw_new = torch.tensor(
        math.log(math.expm1(1.0 - MIN_NEW_WEIGHT)), dtype=torch.float64, requires_grad=True
    )
    # excluded history items: their coefficients stay 0 (their logits are masked out anyway)
    fitted = [raw_new, u] if exclude_seen else [w, c_score, bias, raw_new, u]
    fitted += [v] if similar else []
    if exclude_seen:
        c_score.requires_grad_(False).zero_()
    optimizer = torch.optim.LBFGS(fitted, max_iter=200, line_search_fn="strong_wolfe")

    def new_weight() -> torch.Tensor:
        return MIN_NEW_WEIGHT + F.softplus(raw_new)

    def loss_fn() -> torch.Tensor:
        optimizer.zero_grad()
        new = new_weight() * s[:, width:] + x_new @ u + v * h_t
        logits = torch.cat([x @ w + c_score * s[:, :width] + bias, new], dim=1)
        penalty = l2 * ((w**2).sum() + (u**2).sum() + v**2)
        loss = F.cross_entropy(logits.masked_fill(~valid_t, -1e9), position) + penalty
        loss.backward()
        return loss

    optimizer.step(loss_fn)
    scale = float(new_weight().detach())
    values = [w.detach().numpy(), float(c_score.detach()), float(bias.detach()), u.detach().numpy()]
    # a negative weight (an item close to the buyer's items is less likely) is not what the served term
    # expresses (weights >= 0): served as 0, so its share of the new items' constant is dropped too
    similarity = max(float(v.detach()), 0.0)
    if not all(np.all(np.isfinite(x)) for x in (*values, similarity)):
        log.info("learned repeat score: the fit diverged")
        return None
    # fold the standardization back; the new items' constants (u . mean / std, v * mean / std) move into the
    # history bias
    weights = values[0] / std / scale
    new_constant = float((values[3] * new_mean / new_std).sum()) + similarity * h_mean / h_std
    offset = (
        values[2] - float((values[0] * mean / std).sum()) + (0.0 if exclude_seen else new_constant)
    ) / scale
    new_weights = values[3] / new_std / scale
    coefficients = (*(float(x) for x in weights), values[1] / scale, offset, *(float(x) for x in new_weights))
    return LearnedScore(coefficients, similarity / h_std / scale)
