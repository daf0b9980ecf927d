"""Item-to-item co-occurrence kNN, the strongest simple baseline on real purchase data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from twotower.evaluation.rankers import Interactions, plain_top_k, weighted_history_matrix

if TYPE_CHECKING:
    from twotower.data.batches import HistoryBatch

__all__ = ["ItemKNNRanker", "WEIGHTINGS"]

WEIGHTINGS = ("cosine", "idf", "bm25")


class ItemKNNRanker:
    """Item-to-item co-occurrence kNN over the buyers' training histories.

    Co-occurrence: with ``window=None`` two items co-occur when one buyer interacted with both at any time
    (whole history); with ``window=w`` only within ``w`` positions of each other in the buyer's time-ordered
    events. Weighting of the counts:

    - ``cosine``: ``C_ij / sqrt(n_i n_j)`` (``n_i``: buyers of i, or i's events in window mode);
    - ``idf``: cosine over buyer vectors where a buyer of ``m`` distinct items counts ``log(N / m)``
      (an omnivorous wholesaler says less about two items than a focused buyer); whole history only;
    - ``bm25``: BM25-weighted item x buyer counts (``k1``, ``b``; as implicit's BM25 item-item), dot products;
      whole history only.

    Only the ``neighbors`` strongest entries per item row are kept. A buyer's score for item j is
    ``sum_h w_h * S[h, j]`` over history items h with event weights w_h. ``self_similarity`` sets ``S[i, i]``
    (the history items' own score; irrelevant when seen items are excluded, and the scoring function's
    repeat score is the better way to rank them back). Items nothing co-occurs with are ordered by
    popularity (a tie-break far below any real score), so every list is filled.
    """

    name = "item_knn"

    def __init__(
        self,
        window: int | None = None,
        neighbors: int = 200,
        self_similarity: float = 0.0,
        weighting: str = "cosine",
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        if window is not None and window < 1:
            raise ValueError(f"item_knn window must be >= 1 or null (whole history), got {window}")
        if neighbors < 1:
            raise ValueError(f"item_knn neighbors must be >= 1, got {neighbors}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"item_knn weighting {weighting!r} is unknown; use one of {list(WEIGHTINGS)}")
        if window is not None and weighting != "cosine":
            raise ValueError(
                f"item_knn weighting={weighting!r} needs window=null (whole-history co-occurrence)"
            )
        self.window, self.neighbors, self.self_similarity = window, neighbors, float(self_similarity)
        self.weighting, self.k1, self.b = weighting, float(k1), float(b)
        self.similarity: sp.csr_matrix | None = None
        self.num_items: int | None = None
        self._tiebreak: np.ndarray | None = None

    def _window_counts(self, interactions: Interactions) -> tuple[sp.csr_matrix, np.ndarray]:
        buyer, item, n = interactions.buyer, interactions.item, interactions.num_items
        left, right = [], []
        for offset in range(1, (self.window or 1) + 1):
            same_buyer = buyer[offset:] == buyer[:-offset]  # [n - offset]
            left.append(item[:-offset][same_buyer])
            right.append(item[offset:][same_buyer])
        a, b = np.concatenate(left), np.concatenate(right)
        distinct = a != b  # repeats of one item are not co-occurrence
        rows, cols = np.concatenate([a[distinct], b[distinct]]), np.concatenate([b[distinct], a[distinct]])
        counts = sp.coo_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n)).tocsr()
        return counts, np.bincount(item, minlength=n).astype(np.float32)

    def _whole_history(self, interactions: Interactions) -> sp.csr_matrix:
        buyers = int(interactions.buyer.max()) + 1 if len(interactions.buyer) else 0
        counts = sp.coo_matrix(
            (np.ones(len(interactions.item), np.float32), (interactions.item, interactions.buyer)),
            shape=(interactions.num_items, buyers),
        ).tocsr()  # item x buyer event counts
        if self.weighting == "bm25":
            counts = counts.tocoo()
            idf = np.log(counts.shape[1] or 1) - np.log1p(np.bincount(counts.col, minlength=counts.shape[1]))
            length = np.asarray(counts.sum(axis=1)).ravel()  # events per item
            norm = (1.0 - self.b) + self.b * length / max(float(length.mean()), 1e-12)
            tf = counts.data * (self.k1 + 1.0) / (self.k1 * norm[counts.row] + counts.data)
            weighted = sp.csr_matrix((tf * idf[counts.col], (counts.row, counts.col)), shape=counts.shape)
            return (weighted @ weighted.T).tocsr()
        present = (counts > 0).astype(np.float32)
        if self.weighting == "idf":
            distinct = np.asarray(present.sum(axis=0)).ravel()  # distinct items per buyer
            present = present @ sp.diags(np.log(interactions.num_items / np.maximum(distinct, 1.0)))
            present = present.tocsr()
        norm = 1.0 / np.sqrt(np.maximum(np.asarray(present.multiply(present).sum(axis=1)).ravel(), 1e-12))
        return (sp.diags(norm) @ (present @ present.T) @ sp.diags(norm)).tocsr()

    def fit(self, interactions: Interactions) -> ItemKNNRanker:
        n = interactions.num_items
        if self.window is None:
            similarity = self._whole_history(interactions)
        else:
            counts, item_counts = self._window_counts(interactions)
            norm = 1.0 / np.sqrt(np.maximum(item_counts, 1.0))
            similarity = (sp.diags(norm) @ counts @ sp.diags(norm)).tocsr()
        similarity.setdiag(0.0)  # an item's similarity to itself is self_similarity, set below
        similarity.eliminate_zeros()
        similarity = self._keep_top(similarity.tocsr(), self.neighbors)
        if self.self_similarity:
            similarity = similarity + sp.identity(n, dtype=np.float32, format="csr") * self.self_similarity
        self.similarity = similarity.astype(np.float32).tocsr()
        self.num_items = n
        # Popularity as a tie-breaker far below any real score: a rank in [0, 1) scaled by 1e-6.
        popularity = np.bincount(interactions.item, minlength=n)
        ranks = np.argsort(np.argsort(-popularity, kind="stable"), kind="stable")
        self._tiebreak = ((n - ranks) / (n + 1) * 1e-6).astype(np.float32)
        return self

    @staticmethod
    def _keep_top(matrix: sp.csr_matrix, top: int) -> sp.csr_matrix:
        """Keep the ``top`` largest entries of each row (prunes the long tail of one-off co-occurrences)."""
        matrix.sort_indices()
        lengths = np.diff(matrix.indptr)
        if not len(lengths) or lengths.max() <= top:
            return matrix
        keep = np.ones(matrix.nnz, dtype=bool)
        for row in np.flatnonzero(lengths > top):  # only the dense rows
            start, stop = matrix.indptr[row], matrix.indptr[row + 1]
            drop = np.argpartition(-matrix.data[start:stop], top)[top:]
            keep[start + drop] = False
        matrix = matrix.copy()
        matrix.data[~keep] = 0.0
        matrix.eliminate_zeros()
        return matrix

    def scores(self, batch: HistoryBatch) -> np.ndarray:
        """Dense float32 ``[B, num_items]``: co-occurrence scores plus the popularity tie-break."""
        if self.num_items is None or self.similarity is None:
            raise RuntimeError("item_knn: call fit() before scores()")
        history = weighted_history_matrix(batch, self.num_items)  # [B, N]
        dense = np.asarray((history @ self.similarity).todense(), dtype=np.float32)  # [B, N]
        return dense + self._tiebreak[None, :]

    def recommend(self, batch: HistoryBatch, k: int) -> np.ndarray:
        return plain_top_k(self, batch, k)
