"""The MovieLens ranking model of the chaos test (tests/test_chaos.py), with a learning rate that gets it
near its plateau within a couple of epochs, so a short run's AUC is a stable measure (not collected)."""
from __future__ import annotations

from worker.models.movielens import MovieRankingModel


class ChaosMovieModel(MovieRankingModel):
    def __init__(self, params=None) -> None:
        super().__init__(params, learning_rate=0.3, batch_size=256, seed=0)
