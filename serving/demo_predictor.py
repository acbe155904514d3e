"""Load a SavedModel in this process and run one signature on generated inputs (see request_inputs).

    python -m serving.demo_predictor --saved-model-path E/<version> [--signature serving_default]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from serving.request_inputs import add_sample_flags, fill_inputs, parser_args_from_flags


def predict(saved_model_path: str, signature: str, inputs_for) -> dict[str, np.ndarray]:
    import tensorflow as tf

    from serving.servable import read_signature_defs

    sigs = read_signature_defs(saved_model_path)
    if signature not in sigs:
        raise ValueError(f"{saved_model_path} has no signature {signature!r} (has {sorted(sigs)})")
    module = tf.saved_model.load(saved_model_path)
    inputs = inputs_for(sigs[signature])
    outputs = module.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved-model-path", required=True)
    parser.add_argument("--tag-set", default="serve")
    parser.add_argument("--signature", default="serving_default")
    add_sample_flags(parser)
    args = parser.parse_args(argv)
    parser_args = parser_args_from_flags(args.use_example, args.sparse_features, args.fidv1_slots, args.batch_size)
    rng = np.random.default_rng(args.seed)
    outputs = predict(args.saved_model_path, args.signature,
                      lambda sig: fill_inputs(sig, args.batch_size, parser_args, rng, args.max_id))
    for name, value in outputs.items():
        print(f"{name}: shape {list(value.shape)} {value.reshape(-1)[:8]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
