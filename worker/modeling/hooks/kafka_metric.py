"""Deep-insight messages to Kafka."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np

from services.kafka_producer import KProducer
from worker.modeling.hooks.base import StepContext, StepResult, TrainingHook

log = logging.getLogger(__name__)

BROKERS_ENV = "KAFKA_BROKER_LIST"
TOPIC_ENV = "KAFKA_TOPIC_NAME"


class KafkaMetricHook(TrainingHook):
    """Send each step's `fetch_name` messages (bytes/str, empty ones skipped) to a Kafka topic.

    Brokers and topic default to `$KAFKA_BROKER_LIST` / `$KAFKA_TOPIC_NAME`; `api_version` and
    `producer_options` go to kafka-python. The producer is created in `begin()` and closed (flushing
    everything) in `end()`.
    """

    def __init__(self, brokers: str | None = None, topic: str | None = None, fetch_name: str = "deep_insight_op",
                 api_version: tuple[int, ...] | None = None,
                 producer_options: Mapping[str, object] | None = None) -> None:
        brokers = brokers or os.environ.get(BROKERS_ENV)
        topic = topic or os.environ.get(TOPIC_ENV)
        if not brokers:
            raise ValueError(f"KafkaMetricHook needs brokers: pass brokers= or set ${BROKERS_ENV}")
        if not topic:
            raise ValueError(f"KafkaMetricHook needs a topic: pass topic= or set ${TOPIC_ENV}")
        self.brokers: str = brokers
        self.topic: str = topic
        self.fetch_name = fetch_name
        self.api_version, self.producer_options = api_version, producer_options
        self.producer: KProducer | None = None

    def begin(self) -> None:
        if self.producer is None or self.producer.closed:
            self.producer = KProducer(self.brokers, self.topic, self.api_version, self.producer_options)

    def before_step(self, ctx: StepContext) -> list[str]:
        return [self.fetch_name]

    def after_step(self, ctx: StepContext, result: StepResult) -> None:
        msgs = result.fetches.get(self.fetch_name)
        if msgs is None:
            return
        if self.producer is None or self.producer.closed:
            raise RuntimeError("KafkaMetricHook.after_step outside begin()..end()")
        if isinstance(msgs, np.ndarray):
            msgs = msgs.reshape(-1).tolist()
        self.producer.send(msgs)

    def end(self) -> None:
        if self.producer is not None and not self.producer.closed:
            self.producer.close()
            log.info("kafka metrics: %d sent, %d failed", self.producer.success(), self.producer.failed())
