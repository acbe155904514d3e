"""Training losses: retrieval (batch softmax), in-batch AUC, and learning-to-rank (`worker.modeling.losses.ltr`)."""

from worker.modeling.losses.batch_softmax_loss import batch_softmax_loss
from worker.modeling.losses.inbatch_auc_loss import inbatch_auc_loss

__all__ = ["batch_softmax_loss", "inbatch_auc_loss"]
