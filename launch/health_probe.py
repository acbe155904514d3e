"""`python -m launch.health_probe --ps host:port`: exit 0 iff the PS shard answers its Health RPC.

Kubernetes readiness probes run this inside the PS container (deploy/k8s/ps.yaml): a shard whose port is
open but whose service is not serving yet is not ready.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="health_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--ps", required=True, help="host:port of the PS shard")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    from ps.client import PSClient

    client = PSClient([args.ps])
    try:
        client.wait_until_ready(timeout_s=args.timeout)
        (status,) = client.health()
    except Exception as exc:  # any failure means "not ready"; the message goes to the probe's event log
        print(f"ps {args.ps} is not healthy: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not status.get("serving"):
        print(f"ps {args.ps} is not serving: {status}", file=sys.stderr)
        return 1
    print(f"ps {args.ps} is serving: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
