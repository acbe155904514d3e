"""Serving: a TensorFlow-Serving-compatible PredictionService over exported SavedModels, serving PS shards,
and client tools. Imports `ps` and `services`, never `worker`."""
