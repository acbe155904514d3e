"""The demo's last step: export the trained MovieLens model and query it as TF Serving clients do.

`monolith export` writes a standalone SavedModel, `monolith serve` serves it, and one request made
through `tensorflow_serving`'s `PredictionServiceStub` gets the model's click probabilities for a few
test ratings (sent as serialized Monolith Examples).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_READY = re.compile(r"ready: serving model (\S+) version (\d+) on ([\d.]+:\d+)")


def _monolith(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", *args]


def export_and_serve(model: str, model_dir: str, num_examples: int = 4, timeout_s: float = 600.0) -> int:
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    export_base = os.path.join(model_dir, "export")
    print(f"\n=== export and serve ===\nexporting the latest checkpoint to {export_base} ...", flush=True)
    done = subprocess.run(_monolith("export", "--model", model, "--model-dir", model_dir, "--export-base",
                                    export_base), env=env, cwd=repo, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return done.returncode
    version_dir = done.stdout.strip().splitlines()[-1]
    print(f"standalone SavedModel  {version_dir}", flush=True)
    log_path = os.path.join(model_dir, "serve.log")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(_monolith("serve", "--export-base", export_base, "--port", "0"), env=env, cwd=repo,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while (match := _READY.search(Path(log_path).read_text(errors="replace"))) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                print(Path(log_path).read_text(errors="replace"), file=sys.stderr)
                return 1
            time.sleep(0.2)
        name, version, address = match.groups()
        print(f"monolith serve         model {name!r} version {version} on {address} (log {log_path})", flush=True)
        return _query(address, name, num_examples)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


def _query(address: str, model_name: str, num_examples: int) -> int:
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from worker.models.movielens import SINGLE_FEATURES, monolith_examples
    from worker.models.movielens_data import load_movielens

    _, test = load_movielens().split(0.8)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["examples"].CopyFrom(
        tf.make_tensor_proto(np.array(monolith_examples(test, 0, num_examples), dtype=object)))
    with grpc.insecure_channel(address) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    ctr = tf.make_ndarray(response.outputs["ctr"]).reshape(-1)
    print(f"served prediction      (PredictionServiceStub.Predict, model version "
          f"{response.model_spec.version.value})")
    for i, p in enumerate(ctr):
        features = ", ".join(f"{k}={int(test.columns[k][i])}" for k in SINGLE_FEATURES[:2])
        print(f"  test rating {i}: {features}  P(rating >= 4) = {p:.4f}  (actual {int(test.columns['label'][i])})")
    return 0
