"""`monolith dump --show D`: a dump in words (features, slices, tables, heads, signatures, inputs, params)."""
from __future__ import annotations

from protos import model_dump_pb2 as pb
from worker.model_dump.values import from_entry_config, from_value


def _tensor(t: pb.TensorInfo) -> str:
    if t.is_ragged:
        return f"{t.name}: ragged {t.dtype} [batch, None] (row_splits {t.row_splits_dtype})"
    dims = ", ".join("?" if d < 0 else str(d) for d in t.shape)
    return f"{t.name}: {t.dtype} [{dims}]"


def _entry(cfg: pb.EntryConfig) -> str:
    d = from_entry_config(cfg)
    return d.pop("type") + ("(" + ", ".join(f"{k}={v}" for k, v in d.items()) + ")" if d else "")


def render(dump: pb.ModelDump) -> str:
    lines = [f"model dump of {dump.model_class} (format {dump.format_version}, project {dump.project_version or '?'}, "
             f"TensorFlow {dump.tensorflow_version})", "", "tables:"]
    for t in dump.tables:
        lines.append(f"  {t.name}: dim {sum(s.dim for s in t.segments)}, occurrence_threshold "
                     f"{t.occurrence_threshold}, expire_time {t.expire_time_days:g} days")
        for s in t.segments:
            rate = f", learning_rate {s.learning_rate:g}" if s.has_learning_rate else ""
            lines.append(f"    slice {s.slice_name}: dim {s.dim}, {_entry(s.initializer)}, {_entry(s.optimizer)}{rate}")
    lines.append("features:")
    for f in dump.features:
        combiner = pb.Combiner.Name(f.combiner) + (f"({f.max_seq_length})" if f.combiner == pb.FIRST_N else "")
        shared = f" (shared_name {f.shared_name})" if f.shared_name else ""
        lines.append(f"  {f.feature_name} -> table {f.table}{shared}, {combiner}")
    lines.append("slices read:")
    lines += [f"  {s.feature_name}.{s.slice_name}: table {s.table} [{s.start}:{s.start + s.dim}]" for s in dump.slices]
    lines.append("inputs:")
    for i in dump.input_functions:
        labels = f"; labels {', '.join(i.label_features)}" if i.label_features else ""
        lines.append(f"  {i.mode}: " + "; ".join(_tensor(t) for t in i.features) + labels)
    lines.append("model functions:")
    for m in dump.model_functions:
        heads = ", ".join(f"{h.name} ({'classification' if h.classification else 'regression'})" for h in m.heads)
        extra = f"; extra outputs {', '.join(m.extra_outputs)}" if m.extra_outputs else ""
        losses = f"; {m.extra_losses} extra losses" if m.extra_losses else ""
        lines.append(f"  {m.mode}: heads {heads}{extra}{losses}; reads rows of {', '.join(m.embedded_features)}")
    if dump.HasField("serving_input_receiver"):
        r = dump.serving_input_receiver
        lines.append("serving receiver: " + "; ".join(_tensor(t) for t in r.receiver_tensors) + " -> "
                     + "; ".join(_tensor(t) for t in r.features))
        for a in r.parsers:
            what = [f"sparse {', '.join(a.sparse_features)}" if a.sparse_features else "",
                    f"fid v1 slots {', '.join(map(str, a.fidv1_features))}" if a.fidv1_features else "",
                    "dense " + ", ".join(f"{d.name} {d.dtype}[{d.shape}]" for d in a.dense_features)
                    if a.dense_features else ""]
            lines.append(f"  parses {a.input_name} as Monolith {a.variant_type}: " + "; ".join(w for w in what if w))
    lines.append("signatures:")
    lines += [f"  {s.name}: ({', '.join(s.inputs)}) -> ({', '.join(s.outputs)})" for s in dump.signatures]
    lines.append("dense variables: " + ", ".join(f"{v.name} {list(v.shape)}" for v in dump.dense_variables))
    lines.append(f"dense optimizer: {dump.dense_optimizer_json or 'none'}")
    lines.append("params: " + ", ".join(f"{k}={from_value(v)!r}" for k, v in sorted(dump.params.items())))
    if dump.user_attributes:
        attributes = sorted(dump.user_attributes.items())
        lines.append("attributes: " + ", ".join(f"{k}={from_value(v)!r}" for k, v in attributes))
    return "\n".join(lines)
