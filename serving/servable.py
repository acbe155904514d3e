"""One loaded model version: its SavedModel, its public signatures, and `predict`.

A standalone export answers by itself. A distributed entry export (it carries `assets.extra/entry.json`)
answers in three steps: its `embedding_ids` signature gives the distinct ids of every table, the serving
PS shards return their rows (`ps.client.PSClient`), and the requested signature runs with those rows as
extra inputs. Clients see the same signatures either way: the row inputs are hidden from the metadata.
Concurrent requests can run as one batch (`MergedPredicts`, opt-in) and share their lookups' RPCs (`SharedLookups`);
signatures are called flat (`FlatSignature`): binding arguments and results by name on every call cost as
much as the entry's dense model's own work (its two signatures have ~30 arguments), and a visible share of
a standalone export's call (benchmarks/serving_bench.py, CPU per call). The dense sync
(serving/dense_sync_receiver.py) swaps new variables into those flat calls' captures (`check_dense`,
`assign_dense`), matched by the training names the export recorded.

Inputs are checked against the SignatureDef (names, dtypes, shapes, at most `max_batch_size` rows) before
anything runs, and errors the graph raises on bad data (undecodable protos, wrong sizes): all come back as
INVALID_ARGUMENT. Errors are the classes of `ps.errors` (the PS client's own errors pass through as they
are: a serving PS shard that is down is the client's `PSUnavailable`, naming the shard).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from ps.errors import PSFailedPrecondition, PSInvalidArgument, PSNotFound, PSUnavailable
from services.export_layout import ASSETS_EXTRA, ENTRY_META
from serving import metrics
from serving.merged_predicts import MergedPredicts, PredictCall
from serving.shared_lookups import SharedLookups
from serving.tensors import dtype_name

log = logging.getLogger(__name__)

_BAD_DATA = (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.OutOfRangeError)


def read_signature_defs(path: str | Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The `serve` MetaGraph's SignatureDefs, straight from saved_model.pb."""
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    except Exception as exc:  # OSError, DecodeError
        raise PSFailedPrecondition(f"{path}: unreadable saved_model.pb ({exc})") from None
    for meta in saved.meta_graphs:
        if "serve" in meta.meta_info_def.tags:
            return dict(meta.signature_def)
    raise PSFailedPrecondition(f"{path}: no MetaGraph tagged 'serve'")


def _shape_ok(info: meta_graph_pb2.TensorInfo, shape: tuple[int, ...]) -> bool:
    if info.tensor_shape.unknown_rank:
        return True
    dims = [d.size for d in info.tensor_shape.dim]
    return len(dims) == len(shape) and all(d < 0 or d == s for d, s in zip(dims, shape))


def _shape_text(info: meta_graph_pb2.TensorInfo) -> str:
    if info.tensor_shape.unknown_rank:
        return "any"
    return "[" + ", ".join("?" if d.size < 0 else str(d.size) for d in info.tensor_shape.dim) + "]"


def check_inputs(signature: str, sig: meta_graph_pb2.SignatureDef, inputs: dict[str, np.ndarray],
                 max_batch_size: int | None = None) -> None:
    missing = sorted(set(sig.inputs) - set(inputs))
    unknown = sorted(set(inputs) - set(sig.inputs))
    if missing or unknown:
        raise PSInvalidArgument(f"signature {signature!r} takes inputs {sorted(sig.inputs)}; missing {missing}, "
                              f"unknown {unknown}")
    for name, value in inputs.items():
        info = sig.inputs[name]
        want = tf.dtypes.as_dtype(info.dtype)
        got_ok = value.dtype == object if want == tf.string else value.dtype == want.as_numpy_dtype
        if not got_ok:
            got = "DT_STRING" if value.dtype == object else tf.dtypes.as_dtype(value.dtype).name
            raise PSInvalidArgument(f"signature {signature!r} input {name!r}: expects {dtype_name(info.dtype)}, "
                                  f"got {got}")
        if not _shape_ok(info, value.shape):
            raise PSInvalidArgument(f"signature {signature!r} input {name!r}: expects shape {_shape_text(info)}, "
                                    f"got {list(value.shape)}")
        if max_batch_size is not None and value.ndim and value.shape[0] > max_batch_size:
            raise PSInvalidArgument(f"signature {signature!r} input {name!r}: batch of {value.shape[0]} rows is "
                                    f"above the server's --max-batch-size {max_batch_size}; split the request")


class Servable:
    """A model version; a `ps.client.PSClient` over the serving PS shards is needed for distributed entries."""

    def __init__(self, name: str, version: int, path: str | Path, ps_client=None,
                 max_batch_size: int | None = None, merge_requests: bool = False, concurrent_batches: int = 2) -> None:
        self.name, self.version, self.path = name, int(version), Path(path)
        self.max_batch_size = max_batch_size
        self._merged = MergedPredicts(self._run, max_batch_size, metrics.MERGED.labels(name).observe,
                                      concurrent_batches) if merge_requests else None
        self.signature_defs = read_signature_defs(self.path)
        meta_path = self.path / ASSETS_EXTRA / ENTRY_META
        self.entry: dict[str, Any] | None = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if self.entry is not None:
            if ps_client is None:
                raise PSFailedPrecondition(f"{self.path} is the entry of a distributed export: serve it with "
                                           "--ps-addresses (the serving PS shards)")
            if "lookup" not in self.entry:
                raise PSFailedPrecondition(f"{self.path} is the entry of a distributed export written by an older "
                                           "monolith (one rows__<table> input per table): re-export the checkpoint "
                                           "with this version (`monolith export --mode distributed`)")
            self._check_shards(self.entry, ps_client)
        self.ps_client = ps_client
        self.module = tf.saved_model.load(str(self.path))
        self.public = self._public_signatures()
        self._flat: dict[str, FlatSignature] = {}
        self.dense_layout: dict[str, dict] | None = None
        self._dense_vars: dict[int, tf.Variable] = {}
        """Saved variable index -> the variable its signatures capture instead (set by a dense sync)."""
        if self.entry is not None:
            self._lookups = SharedLookups(ps_client)
            self._flat = {name: FlatSignature(self.module.signatures[name])
                          for name in ["embedding_ids", *self.entry["serving_signatures"]]}
            self.dense_layout = self.entry.get("dense")
        else:
            self._flat = {name: flat for name in self.public
                          if (flat := FlatSignature(self.module.signatures[name])).takes(self.public[name])}

    # -- dense sync -------------------------------------------------------------------------------
    def check_dense(self, values: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
        """{saved variable index: value} for training dense values by name (`dense_<i>`), every one checked
        against the export's record (`entry.json` "dense") and the variable: nothing passes unless all do."""
        if self.dense_layout is None:
            what = "a standalone export" if self.entry is None else "an entry exported without its dense layout"
            raise PSFailedPrecondition(f"model {self.name!r} version {self.version} is {what}: it cannot take dense "
                                       f"values (re-export it distributed with this version of monolith)")
        out = {}
        for name, value in values.items():
            record = self.dense_layout.get(name)
            if record is None:
                raise PSInvalidArgument(f"dense variable {name!r} is not in model {self.name!r} version "
                                        f"{self.version} (it has {sorted(self.dense_layout)})")
            var = self.module.dense[record["index"]]
            shape = tuple(record["shape"])
            if tuple(value.shape) != shape or tuple(var.shape) != shape:
                raise PSInvalidArgument(f"dense variable {name!r}: shape {list(value.shape)} sent, model "
                                        f"{self.name!r} version {self.version} has {list(shape)}")
            if not np.isfinite(value).all():
                raise PSInvalidArgument(f"dense variable {name!r}: values contain NaN or Inf")
            out[record["index"]] = value.astype(var.dtype.as_numpy_dtype, copy=False)
        return out

    def assign_dense(self, checked: dict[int, np.ndarray]) -> None:
        """Swap in new variables holding `checked` (from `check_dense`): each signature's captured handles are
        replaced as one tuple, so a Predict, which reads them once, sees every value of one call old or all new.
        Calls are serialized by the caller."""
        fresh = {k: tf.Variable(v, trainable=False) for k, v in checked.items()}
        swaps = {id(self._dense_handle(k)): var for k, var in fresh.items()}
        for flat in self._flat.values():
            flat.replace_variables(swaps)
        self._dense_vars.update(fresh)

    def _dense_handle(self, k: int):
        """The handle saved variable `k` is captured as now (the loaded one until a dense sync replaced it)."""
        var = self._dense_vars.get(k)
        return var.handle if var is not None else self.module.dense[k].handle

    def _check_shards(self, entry: dict[str, Any], client) -> None:
        want = entry["num_serving_shards"]
        if client.num_shards != want:
            raise PSFailedPrecondition(f"{self.path} was exported for {want} serving PS shards, "
                                       f"{client.num_shards} addresses given")
        for i, health in enumerate(client.health()):
            if not health["serving"]:
                raise PSUnavailable(f"serving PS shard {i} ({client.addresses[i]}): {health['error']}", i,
                                    client.addresses[i])
            served = Path(health.get("restored_from", "")).name
            if served != entry["version"]:
                raise PSFailedPrecondition(f"serving PS shard {i} ({client.addresses[i]}) serves version "
                                           f"{served!r}, this entry is version {entry['version']!r}")

    def _public_signatures(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        if self.entry is None:
            return {k: v for k, v in self.signature_defs.items() if not k.startswith("__")}
        # clients send the serving inputs (those of `embedding_ids`) and get the serving signature's outputs
        out = {}
        for name in self.entry["serving_signatures"]:
            sig = meta_graph_pb2.SignatureDef()
            sig.CopyFrom(self.signature_defs[name])
            sig.inputs.clear()
            for key, info in self.signature_defs["embedding_ids"].inputs.items():
                sig.inputs[key].CopyFrom(info)
            out[name] = sig
        return out

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        sig = self.public.get(name)
        if sig is None:
            raise PSNotFound(f"model {self.name!r} version {self.version} has no signature {name!r} "
                             f"(signatures: {sorted(self.public)})")
        return sig

    def predict(self, signature: str, inputs: dict[str, np.ndarray], output_filter: Iterable[str] = ()
                ) -> dict[str, np.ndarray]:
        sig = self.signature(signature)
        wanted = list(output_filter)
        unknown = [o for o in wanted if o not in sig.outputs]
        if unknown:
            raise PSInvalidArgument(f"output_filter {unknown}: signature {signature!r} outputs {sorted(sig.outputs)}")
        check_inputs(signature, sig, inputs, self.max_batch_size)
        if self._merged is None:
            return self._run(signature, inputs, tuple(wanted))
        return self._merged.predict(PredictCall(signature, inputs, tuple(wanted)))

    def _run(self, signature: str, inputs: dict[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One call of a signature on checked inputs."""
        tensors = {k: tf.constant(v) for k, v in inputs.items()}
        try:
            if self.entry is not None:
                out = self._flat[signature](self._entry_inputs(self.entry, tensors))
            elif signature in self._flat:
                out = self._flat[signature](tensors)
            else:  # input names the flat function does not know (`FlatSignature.takes`)
                out = self.module.signatures[signature](**tensors)
        except _BAD_DATA as exc:
            raise PSInvalidArgument(f"signature {signature!r}: {exc.message}") from None
        return {k: v.numpy() for k, v in out.items() if not wanted or k in wanted}

    def _entry_inputs(self, entry: dict[str, Any], tensors: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """`embedding_ids` (parsed features; every table's distinct ids in one tensor, with offsets), the rows of
        those ids from the serving PS shards, flattened into one tensor: the inputs of the entry's dense
        signature. One tensor each way, whatever the number of tables: each conversion between numpy and an
        eager tensor holds the interpreter lock for a while under load."""
        keys, tables = entry["lookup"], entry["tables"]
        self._lookups.announce()  # a lookup of concurrent requests about to go waits for this one's ids
        try:
            inputs = self._flat["embedding_ids"](tensors)
            ids, split = inputs[keys["ids"]].numpy(), inputs[keys["id_split"]].numpy()
            ids_by_table = {t: ids[split[i]:split[i + 1]] for i, t in enumerate(tables)}
        except BaseException:
            self._lookups.withdraw()
            raise
        rows = self._lookups.lookup(ids_by_table, announced=True)
        flat = np.concatenate([rows[t].reshape(-1) for t in tables]) if tables else np.zeros(0, np.float32)
        inputs[keys["rows"]] = tf.constant(flat)
        return inputs  # the dense signature takes the inputs it names, in its order


class FlatSignature:
    """A loaded signature called with a dict of tensors and answering one, through its flat function
    (`ConcreteFunction.inference_fn.call_flat`): inputs in the signature's order, outputs in the order of
    its sorted output keys, captures fetched once. Skips the per-call binding and checking of every
    argument, so callers pass tensors of the signature's dtypes (`check_inputs` ran on the client's)."""

    def __init__(self, fn) -> None:
        self._call = fn.inference_fn.call_flat
        self._bound: tuple[tuple, dict[int, tf.Variable]] = (tuple(fn.captured_inputs), {})
        """The captured tensors, and the variables (by id of their handle) that a dense sync swapped in: holding
        them keeps those variables alive while a call uses their handles."""
        self.inputs = [p.name for p in fn.function_type.parameters.values()]
        self.outputs = sorted(fn.structured_outputs)

    def takes(self, sig: meta_graph_pb2.SignatureDef) -> bool:
        """Whether the flat function's parameters and outputs are the SignatureDef's inputs and outputs (names
        can differ, e.g. when an input key is not a Python identifier: then the structured call binds them)."""
        return sorted(self.inputs) == sorted(sig.inputs) and self.outputs == sorted(sig.outputs)

    def __call__(self, tensors: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        captures, _owners = self._bound  # one read; `_owners` keeps swapped-in variables alive during the call
        return dict(zip(self.outputs, self._call(*[tensors[n] for n in self.inputs], *captures)))

    def replace_variables(self, swaps: dict[int, tf.Variable]) -> None:
        """Capture other variables ({id of a captured handle: the variable to capture instead}), as one new
        binding: a call reads it once, so it runs with every old variable or every new one."""
        captures, owners = self._bound
        new_captures, new_owners = [], {}
        for c in captures:
            var = swaps.get(id(c))
            if var is not None:
                c = var.handle
                new_owners[id(c)] = var
            elif id(c) in owners:
                new_owners[id(c)] = owners[id(c)]
            new_captures.append(c)
        self._bound = (tuple(new_captures), new_owners)
