"""Evaluation metrics over a whole eval pass: exact AUC (rank statistic, ties averaged) and MSE."""
from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, preds: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"auc: {labels.size} labels vs {preds.size} predictions")
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(preds, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mse(labels: np.ndarray, preds: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    preds = np.asarray(preds, dtype=np.float64).reshape(-1)
    if labels.shape != preds.shape:
        raise ValueError(f"mse: {labels.size} labels vs {preds.size} predictions")
    return float(np.mean((labels - preds) ** 2)) if labels.size else float("nan")
