"""Reading a real `/metrics` endpoint over HTTP, the way Prometheus does."""
from __future__ import annotations

import ssl
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels) -> float | None:
        return self.samples.get((name, frozenset((k, str(v)) for k, v in labels.items())))

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


def scrape(port: int, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Scrape:
    """One scrape of `host:port/metrics` (HTTPS with the client context `tls`)."""
    scheme = "http" if tls is None else "https"
    with urllib.request.urlopen(f"{scheme}://{host}:{port}/metrics", timeout=10, context=tls) as resp:
        assert resp.status == 200
        return Scrape(resp.read().decode())
