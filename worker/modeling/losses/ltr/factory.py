"""`make_loss_fn`: one ranking loss function from a weighted combination of named losses."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from worker.modeling.losses.ltr.losses import (
    _approx_ndcg_loss,
    _list_mle_loss,
    _mean_squared_loss,
    _pairwise_hinge_loss,
    _pairwise_logistic_loss,
    _pairwise_soft_zero_one_loss,
    _sigmoid_cross_entropy_loss,
    _softmax_loss,
)
from worker.modeling.losses.reduction import Reduction


class RankingLossKey:
    """Names of the supported ranking losses."""

    PAIRWISE_HINGE_LOSS = "pairwise_hinge_loss"
    PAIRWISE_LOGISTIC_LOSS = "pairwise_logistic_loss"
    PAIRWISE_SOFT_ZERO_ONE_LOSS = "pairwise_soft_zero_one_loss"
    SOFTMAX_LOSS = "softmax_loss"
    SIGMOID_CROSS_ENTROPY_LOSS = "sigmoid_cross_entropy_loss"
    MEAN_SQUARED_LOSS = "mean_squared_loss"
    LIST_MLE_LOSS = "list_mle_loss"
    APPROX_NDCG_LOSS = "approx_ndcg_loss"


# loss key -> (function, takes lambda_weight, takes seed)
_LOSSES: dict[str, tuple[Callable, bool, bool]] = {
    RankingLossKey.PAIRWISE_HINGE_LOSS: (_pairwise_hinge_loss, True, False),
    RankingLossKey.PAIRWISE_LOGISTIC_LOSS: (_pairwise_logistic_loss, True, False),
    RankingLossKey.PAIRWISE_SOFT_ZERO_ONE_LOSS: (_pairwise_soft_zero_one_loss, True, False),
    RankingLossKey.SOFTMAX_LOSS: (_softmax_loss, True, False),
    RankingLossKey.SIGMOID_CROSS_ENTROPY_LOSS: (_sigmoid_cross_entropy_loss, False, False),
    RankingLossKey.MEAN_SQUARED_LOSS: (_mean_squared_loss, False, False),
    RankingLossKey.LIST_MLE_LOSS: (_list_mle_loss, True, True),
    RankingLossKey.APPROX_NDCG_LOSS: (_approx_ndcg_loss, False, False),
}


def _one_loss(key, kwargs: dict, lambda_weight, seed):
    if key not in _LOSSES:
        raise ValueError(f"Invalid loss_key: {key!r}")
    fn, takes_lambda_weight, takes_seed = _LOSSES[key]
    call_kwargs = dict(kwargs)
    if takes_lambda_weight:
        call_kwargs["lambda_weight"] = lambda_weight
    if takes_seed:
        call_kwargs["seed"] = seed
    return fn(**call_kwargs)


def make_loss_fn(
    loss_keys,
    loss_weights=None,
    weights_feature_name: str | None = None,
    lambda_weight=None,
    reduction: str = Reduction.SUM_BY_NONZERO_WEIGHTS,
    name: str | None = None,
    seed=None,
    extra_args: dict | None = None,
):
    """A `loss_fn(labels, logits, features)` returning Σ_k loss_weights[k] · loss_k.

    `weights_feature_name` names the feature holding example weights; `lambda_weight` goes to the
    pairwise, softmax and ListMLE losses, `seed` to ListMLE, and `extra_args` to every loss. Every loss
    uses `reduction` (approx-NDCG's own default SUM is overridden). An unknown key raises when the
    returned function is called, as in the original.
    """
    if reduction not in Reduction.all() or reduction == Reduction.NONE:
        raise ValueError(f"Invalid reduction: {reduction!r}")
    if isinstance(loss_keys, str):
        loss_keys = [loss_keys]
    loss_keys = list(loss_keys or [])
    if not loss_keys:
        raise ValueError("loss_keys cannot be None or empty.")
    if loss_weights:
        loss_weights = list(loss_weights)
        if len(loss_weights) != len(loss_keys):
            raise ValueError(
                f"loss_keys and loss_weights must have the same size, got {len(loss_keys)} and {len(loss_weights)}"
            )

    def _loss_fn(labels, logits, features):
        weights = None
        if weights_feature_name:
            if weights_feature_name not in features:
                raise ValueError(f"weights feature {weights_feature_name!r} not in features {sorted(features)}")
            weights = tf.convert_to_tensor(features[weights_feature_name])
        kwargs = dict(labels=labels, logits=logits, weights=weights, reduction=reduction, name=name)
        kwargs.update(extra_args or {})
        losses = [_one_loss(key, kwargs, lambda_weight, seed) for key in loss_keys]
        if loss_weights:
            losses = [loss * weight for loss, weight in zip(losses, loss_weights)]
        return tf.add_n(losses)

    return _loss_fn
