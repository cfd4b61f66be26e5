"""The copy-detection figures of the match card, as the Image Similarity Challenge defines them
(Douze et al., 2021): pure functions of search results, no index or server.

- recall@k: the share of copy queries whose original is among the first k results.
- micro average precision: every query contributes its best result (similarity, right or
  wrong); all results of all queries are ranked together by similarity, and precision is
  averaged over the copies' originals found, divided by all copy queries (an original never
  found lowers it). Non-copies (new photos in no index) contribute false results only, so a
  matcher that is confident about new photos is penalised: one threshold serves every query.
- the AUC of a score between two groups (edited copies against fresh re-encodings of originals).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def recall_at(found_keys: Sequence[Sequence[str]], truth: Sequence[str], k: int) -> Optional[float]:
    """Share of queries whose true key is in their first k keys (None for no queries)."""
    if not len(truth):
        return None
    return float(np.mean([t in list(keys)[:k] for keys, t in zip(found_keys, truth)]))


def micro_average_precision(similarity: np.ndarray, correct: np.ndarray, positives: int) -> Optional[float]:
    """ISC micro-AP: `similarity` and `correct` (bool) of every query's best result, copies and
    non-copies together; `positives`: the number of copy queries (the ground-truth pairs)."""
    if positives <= 0:
        return None
    order = np.argsort(-np.asarray(similarity, np.float64), kind="stable")
    hits = np.asarray(correct, bool)[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / positives)


def auc(positive: np.ndarray, negative: np.ndarray) -> Optional[float]:
    """P(a positive scores above a negative), ties counted half (None when a side is empty)."""
    positive, negative = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if not positive.size or not negative.size:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(positive.size), np.zeros(negative.size)], np.r_[positive, negative]))
