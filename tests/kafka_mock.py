"""A real Kafka-protocol broker for tests: librdkafka's mock cluster, kept alive in this process.

Run as `python -m tests.kafka_mock`; prints `BROKERS host:port[,...]` once the cluster listens and
serves until terminated. kafka-python clients must use `api_version=(2, 3, 0)` against it.
"""
import signal
import sys

from confluent_kafka import Producer


def main() -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    producer = Producer({"test.mock.num.brokers": 1})
    meta = producer.list_topics(timeout=10)
    brokers = ",".join(f"{b.host}:{b.port}" for b in meta.brokers.values())
    print(f"BROKERS {brokers}", flush=True)
    while not stop:
        producer.poll(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
