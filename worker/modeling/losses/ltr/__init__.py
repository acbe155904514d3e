"""Learning-to-rank losses, lambda weights and list utilities (the original's `ltr_losses.py`).

Names match the original module; the losses are also exported without the leading underscore.
"""

from worker.modeling.losses.ltr.factory import RankingLossKey, make_loss_fn
from worker.modeling.losses.ltr.lambda_weights import (
    DCGLambdaWeight,
    IdentityLambdaWeight,
    ListMLELambdaWeight,
    PrecisionLambdaWeight,
    _LambdaWeight,
    create_ndcg_lambda_weight,
    create_p_list_mle_lambda_weight,
    create_reciprocal_rank_lambda_weight,
)
from worker.modeling.losses.ltr.losses import (
    _approx_ndcg_loss,
    _list_mle_loss,
    _mean_squared_loss,
    _pairwise_comparison,
    _pairwise_hinge_loss,
    _pairwise_logistic_loss,
    _pairwise_loss,
    _pairwise_soft_zero_one_loss,
    _sigmoid_cross_entropy_loss,
    _softmax_loss,
    _sort_and_normalize,
)
from worker.modeling.losses.ltr.utils import (
    _EPSILON,
    approx_ranks,
    get_batch_idx_size,
    inverse_max_dcg,
    label_valid_fn,
    organize_valid_indices,
    reshape_first_ndims,
    shuffle_valid_indices,
    sort_by_scores,
)
from worker.modeling.losses.reduction import Reduction, compute_weighted_loss

pairwise_hinge_loss = _pairwise_hinge_loss
pairwise_logistic_loss = _pairwise_logistic_loss
pairwise_soft_zero_one_loss = _pairwise_soft_zero_one_loss
softmax_loss = _softmax_loss
sigmoid_cross_entropy_loss = _sigmoid_cross_entropy_loss
mean_squared_loss = _mean_squared_loss
list_mle_loss = _list_mle_loss
approx_ndcg_loss = _approx_ndcg_loss

__all__ = [
    "_EPSILON",
    "DCGLambdaWeight",
    "IdentityLambdaWeight",
    "ListMLELambdaWeight",
    "PrecisionLambdaWeight",
    "RankingLossKey",
    "Reduction",
    "_LambdaWeight",
    "_approx_ndcg_loss",
    "_list_mle_loss",
    "_mean_squared_loss",
    "_pairwise_comparison",
    "_pairwise_hinge_loss",
    "_pairwise_logistic_loss",
    "_pairwise_loss",
    "_pairwise_soft_zero_one_loss",
    "_sigmoid_cross_entropy_loss",
    "_softmax_loss",
    "_sort_and_normalize",
    "approx_ndcg_loss",
    "approx_ranks",
    "compute_weighted_loss",
    "create_ndcg_lambda_weight",
    "create_p_list_mle_lambda_weight",
    "create_reciprocal_rank_lambda_weight",
    "get_batch_idx_size",
    "inverse_max_dcg",
    "label_valid_fn",
    "list_mle_loss",
    "make_loss_fn",
    "mean_squared_loss",
    "organize_valid_indices",
    "pairwise_hinge_loss",
    "pairwise_logistic_loss",
    "pairwise_soft_zero_one_loss",
    "reshape_first_ndims",
    "shuffle_valid_indices",
    "sigmoid_cross_entropy_loss",
    "softmax_loss",
    "sort_by_scores",
]
