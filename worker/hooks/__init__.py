"""Training hooks run by the worker loop (see `worker.hooks.base.TrainingHook`)."""
from worker.hooks.base import StepContext, StepResult, TrainingHook

__all__ = ["StepContext", "StepResult", "TrainingHook"]
