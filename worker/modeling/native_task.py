"""`NativeTask`: the parameter defaults every model starts from, and `NativeContext`, its factory access."""
from __future__ import annotations

import abc
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from worker.modeling.estimator_spec import ModeKeys
from worker.modeling.params import Params


class NativeContext:
    """What a model may call while building: feature-slot creation, gradient application, async work."""

    def __init__(self, feature_factory=None, async_function_mgr=None, layout_factory=None) -> None:
        if feature_factory is not None and layout_factory is not None:
            raise ValueError("Cannot set feature_factory and layout_factory in the same time")
        self.feature_factory = feature_factory
        self.async_function_mgr = async_function_mgr
        self.layout_factory = layout_factory

    def create_feature_slot(self, config):
        factory = self.layout_factory if self.layout_factory is not None else self.feature_factory
        if factory is None:
            raise ValueError("NativeContext has neither a feature_factory nor a layout_factory")
        return factory.create_feature_slot(config)

    def apply_embedding_gradients(self, grads_and_vars, scale=1):
        if self.layout_factory is not None:
            return self.layout_factory.apply_gradients(grads_and_vars)
        if self.feature_factory is None:
            raise ValueError("NativeContext has no feature_factory to apply embedding gradients with")
        return self.feature_factory.apply_gradients(grads_and_vars, scale=scale)

    def add_async_function(self, target, args=None, kwargs=None, is_async=None, queue_name="async_queue"):
        if self.async_function_mgr is None:
            raise ValueError("NativeContext has no async_function_mgr")
        return self.async_function_mgr.add_async_function(target, args=args, kwargs=kwargs, is_async=is_async,
                                                          queue_name=queue_name)


class AsyncFunctionManager:
    """Runs functions either inline or on one background thread per queue (in submission order)."""

    def __init__(self, default_async: bool = True) -> None:
        self.default_async = default_async
        self._queues: dict[str, ThreadPoolExecutor] = {}

    def add_async_function(self, target, args=None, kwargs=None, is_async=None, queue_name="async_queue"):
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if not (self.default_async if is_async is None else is_async):
            return target(*args, **kwargs)
        pool = self._queues.get(queue_name)
        if pool is None:
            pool = self._queues[queue_name] = ThreadPoolExecutor(1, thread_name_prefix=queue_name)
        fut: Future = pool.submit(target, *args, **kwargs)
        return fut

    def close(self) -> None:
        for pool in self._queues.values():
            pool.shutdown(wait=True)
        self._queues.clear()


def _base_params() -> Params:
    p = Params()
    p.define("name", None, "model name")
    p.define("cls", None, "the task class")
    train = Params()
    train.define("per_replica_batch_size", 32, "examples per worker per step")
    train.define("max_steps", None, "stop training after this global step")
    eval_ = Params()
    eval_.define("per_replica_batch_size", 32, "examples per worker per eval step")
    eval_.define("steps", None, "eval steps (None: whole eval dataset)")
    p.define("train", train)
    p.define("eval", eval_)
    return p


class NativeTask(abc.ABC):
    @classmethod
    def params(cls) -> Params:
        p = _base_params()
        p.cls = cls
        metrics = Params()
        for name, default in [
            ("enable_deep_insight", False), ("deep_insight_target", "ctr_head"), ("deep_insight_name", None),
            ("deep_insight_sample_ratio", 0.01), ("extra_fields_keys", []), ("enable_throughput_hook", True),
            ("enable_kafka_metrics", False), ("enable_tf2_profiler_hook", True), ("enable_file_metrics", False),
            ("file_base_name", "/vepfs/jaguar_deepinsight_results"), ("file_ext", "txt"), ("parse_fn", None),
            ("key_fn", None), ("layout_fn", None), ("dump_filename", ""), ("use_data_service", False),
        ]:
            metrics.define(name, default)
        p.define("metrics", metrics)
        p.define("mode", ModeKeys.TRAIN, "temporary, as in Monolith: the mode model_fn sees for TRAIN")
        for name, default in [
            ("max_pending_seconds_for_barrier", 30), ("slow_start_steps", 0), ("sample_bias", 0.0),
            ("use_gpu_emb_table", False), ("use_fountain", False), ("fountain_zk_host", ""),
            ("fountain_model_name", ""), ("fountain_parse_on_server", False),
            ("fountain_precompute_value_rowids", False),
        ]:
            p.train.define(name, default)
        serving = Params()
        for name, default in [
            ("export_with_gpu_allowed", False), ("export_with_cleared_entry_devices", False),
            ("export_when_saving", False), ("export_dir_base", "exported_models"), ("export_mode", "distributed"),
            ("shared_embedding", True), ("with_remote_gpu", False),
        ]:
            serving.define(name, default)
        p.define("serving", serving)
        return p

    p: Params
    _ctx: NativeContext

    def __init__(self, params: Params) -> None:
        object.__setattr__(self, "p", params)
        object.__setattr__(self, "_ctx", NativeContext())

    @property
    def ctx(self) -> NativeContext:
        return self._ctx

    @abc.abstractmethod
    def create_input_fn(self, mode: str):
        ...

    @abc.abstractmethod
    def create_model_fn(self):
        ...

    def create_serving_input_receiver_fn(self) -> Any:
        return None
