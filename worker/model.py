"""The user-facing model API: subclass `MonolithModel`, return an `EstimatorSpec`, run an `Estimator`."""
from worker.modeling.estimator_spec import EstimatorSpec, ModeKeys
from worker.modeling.heads import get_sigmoid_loss_and_pred, get_softmax_loss_and_pred
from worker.modeling.native_model import MonolithBaseModel, MonolithModel
from worker.modeling.segment_configs import (
    AdagradOptimizer,
    AdamOptimizer,
    ConstantsInitializer,
    FtrlOptimizer,
    OnesInitializer,
    RandomUniformInitializer,
    SgdOptimizer,
    ZerosInitializer,
)
from worker.runtime.estimator import Estimator
from worker.runtime.run_config import RunConfig

__all__ = [
    "AdagradOptimizer", "AdamOptimizer", "ConstantsInitializer", "Estimator", "EstimatorSpec", "FtrlOptimizer",
    "ModeKeys", "MonolithBaseModel", "MonolithModel", "OnesInitializer", "RandomUniformInitializer", "RunConfig",
    "SgdOptimizer", "ZerosInitializer", "get_sigmoid_loss_and_pred", "get_softmax_loss_and_pred",
]
