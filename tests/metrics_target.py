"""A process that serves our metrics and waits for a signal: the exit hook's test subject.
`python -m tests.metrics_target --role ps --index 0 [--exit-hook] [--chain]`. Prints `METRICS_PORT <port>` once serving.
"""
import argparse
import signal
import sys
import threading

from services import exit_hook, role_logging
from services.metrics import get_cli, start_metrics_server


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="ps")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--exit-hook", action="store_true")
    parser.add_argument("--chain", action="store_true", help="a graceful SIGHUP handler installed before the hook")
    args = parser.parse_args()
    role_logging.configure(args.role, args.index)
    done = threading.Event()
    if args.chain:
        def graceful(signo, frame):
            print(f"GRACEFUL {signo}", flush=True)
            done.set()
        signal.signal(signal.SIGHUP, graceful)
    if args.exit_hook:
        exit_hook.install(args.role, args.index)
    port = start_metrics_server(0)
    tags = {"role": args.role, "index": args.index}
    cli = get_cli()
    cli.emit_counter("target.requests", 3, tags)
    cli.emit_store("target.value", 1.5, tags)
    cli.emit_timer("target.latency", 0.02, tags)
    print(f"METRICS_PORT {port}", flush=True)
    while not done.wait(0.2):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
