"""The user-facing model API: subclass `MonolithModel`, return an `EstimatorSpec`, run an `Estimator`."""
from worker.entry import (
    AdagradOptimizer,
    AdamOptimizer,
    ConstantsInitializer,
    FtrlOptimizer,
    OnesInitializer,
    RandomUniformInitializer,
    SgdOptimizer,
    ZerosInitializer,
)
from worker.estimator import Estimator
from worker.estimator_spec import EstimatorSpec, ModeKeys
from worker.heads import get_sigmoid_loss_and_pred, get_softmax_loss_and_pred
from worker.native_model import MonolithBaseModel, MonolithModel
from worker.run_config import RunConfig

__all__ = [
    "AdagradOptimizer", "AdamOptimizer", "ConstantsInitializer", "Estimator", "EstimatorSpec", "FtrlOptimizer",
    "ModeKeys", "MonolithBaseModel", "MonolithModel", "OnesInitializer", "RandomUniformInitializer", "RunConfig",
    "SgdOptimizer", "ZerosInitializer", "get_sigmoid_loss_and_pred", "get_softmax_loss_and_pred",
]
