"""The TensorFlow peer of a PS cluster: `ParameterServerStrategy` with tf_keras, 2 PS x 1 worker.

The same MovieLens model (Embedding tables, the MLP, sigmoid cross-entropy, Adagrad for every variable) on
the same input as the model it stands beside (`--model demo|readme`: that model's `input_fn`), trained
the way TensorFlow's tutorial does it: a coordinator (this process) schedules steps on the worker, whose
variables live on the PS tasks (the embedding tables round-robin over them; gathers and the sparse Adagrad
updates run on the PS). PS and worker tasks are separate `tf.distribute.Server` processes on loopback.
Timed after the first step, every update applied (`coordinator.join()`).

tf_keras is not part of the default install (`make bench-deps` installs it with `--no-deps`).
    python benchmarks/pss_peer.py [--model demo] [--batch-size 256] [--steps 300] [--num-ps 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _serve(spec: dict, job: str, index: int) -> None:
    """A PS or worker task: serves until killed."""
    import tensorflow as tf

    cluster = tf.train.ClusterSpec(spec)
    server = tf.distribute.Server(cluster, job_name=job, task_index=index, protocol="grpc", start=True)
    print("ready", flush=True)
    server.join()


def _cluster(num_ps: int) -> tuple[dict, list[subprocess.Popen]]:
    from services.ports import free_port

    spec = {"chief": [f"127.0.0.1:{free_port()}"], "worker": [f"127.0.0.1:{free_port()}"],
            "ps": [f"127.0.0.1:{free_port()}" for _ in range(num_ps)]}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", json.dumps(spec), job, str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for job in ("ps", "worker") for i in range(len(spec[job]))]
    for proc in procs:
        if proc.stdout is None or proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a TF server task did not start (exit {proc.poll()})")
    return spec, procs


def run_pss(model: str, batch_size: int, steps: int, num_ps: int = 2) -> dict:
    """ms/step and examples/s of `steps` steps after the first, with `num_ps` PS tasks and one worker."""
    import tensorflow as tf
    import tf_keras
    from movielens_keras import with_label
    from movielens_runs import MODELS

    from worker.modeling.estimator_spec import ModeKeys
    from worker.models.movielens import HIDDEN
    from worker.models.movielens_data import FEATURES, SINGLE_FEATURES, load_movielens

    spec, procs = _cluster(num_ps)
    try:
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(spec), task_type="chief", task_id=0, rpc_layer="grpc")
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
        vocab = load_movielens().vocab_sizes
        with strategy.scope():
            init = tf_keras.initializers.RandomUniform(-0.05, 0.05, seed=0)
            embeddings = {f: tf_keras.layers.Embedding(vocab[f], 16, embeddings_initializer=init) for f in FEATURES}
            mlp = [tf_keras.layers.Dense(w, activation="relu") for w in HIDDEN] + [tf_keras.layers.Dense(1)]
            optimizer = tf_keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.1)
            for f in FEATURES:
                embeddings[f].build((None,))
            width = 16 * len(FEATURES)
            for layer, w in zip(mlp, (width, *HIDDEN)):
                layer.build((None, w))
            variables = [v for layer in [*embeddings.values(), *mlp] for v in layer.trainable_variables]

        def logits(features):
            parts = []
            for f in FEATURES:
                ids = features[f]
                pooled = tf.math.unsorted_segment_sum(embeddings[f](ids.values), ids.value_rowids(),
                                                      tf.shape(ids.row_splits)[0] - 1)
                if f not in SINGLE_FEATURES:
                    pooled = tf.math.divide_no_nan(pooled, tf.cast(ids.row_lengths(), tf.float32)[:, None])
                parts.append(pooled)
            x = tf.concat(parts, axis=1)
            for layer in mlp:
                x = layer(x)
            return tf.reshape(x, [-1])

        user_model = MODELS[model][1](batch_size=batch_size)

        def dataset_fn():
            return with_label(user_model.input_fn(ModeKeys.TRAIN))

        iterator = iter(coordinator.create_per_worker_dataset(dataset_fn))

        @tf.function
        def step(iterator):
            def replica_step(features, label):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label,
                                                                                  logits=logits(features)))
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return loss

            return strategy.run(replica_step, args=next(iterator))

        coordinator.schedule(step, args=(iterator,))
        coordinator.join()
        started = time.perf_counter()
        for _ in range(steps):
            coordinator.schedule(step, args=(iterator,))
        coordinator.join()
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    return {"examples_per_sec": steps * batch_size / elapsed, "ms_per_step": 1000.0 * elapsed / steps}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("demo", "readme"), default="demo")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--num-ps", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON line (for train_bench.py)")
    parser.add_argument("--serve", nargs=3, metavar=("SPEC", "JOB", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(json.loads(args.serve[0]), args.serve[1], int(args.serve[2]))
        return 0
    result = run_pss(args.model, args.batch_size, args.steps, args.num_ps)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"TF ParameterServerStrategy {args.num_ps} PS x 1 worker, {args.model} model, batch {args.batch_size}: "
              f"{result['ms_per_step']:.2f} ms/step, {result['examples_per_sec']:.0f} examples/s")
    sys.stdout.flush()
    os._exit(0)  # the coordinator's teardown only complains about the tasks it has lost: skip it


if __name__ == "__main__":
    sys.exit(main())
