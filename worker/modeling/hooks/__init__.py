"""Training hooks run by the worker loop (see `worker.modeling.hooks.base.TrainingHook`)."""
from worker.modeling.hooks.base import StepContext, StepResult, TrainingHook

__all__ = ["StepContext", "StepResult", "TrainingHook"]
