"""Model dumps: what is recorded, the file's integrity checks, and training from a dump = training with the code.

The references are the models run from their own code by the same `Estimator`: losses step by step,
embedding rows, dense values, evaluation and predictions must agree to 1e-6.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from protos import example_pb2
from protos import model_dump_pb2 as pb
from ps.persist.checkpoint import latest_checkpoint
from ps.store.shard_state import ShardState
from services.export_layout import ASSETS_EXTRA, ENTRY_META, WARMUP_FILE, ps_sub_model
from tests.test_worker_movielens import _write_raw
from worker.export.saved_model_exporters import StandaloneExporter
from worker.export.warmup import read_warmup_file
from worker.model import Estimator, RunConfig
from worker.model_dump import dump_file
from worker.model_dump.builder import dump_model
from worker.model_dump.replay import DumpedModel
from worker.modeling.estimator_spec import EstimatorSpec
from worker.modeling.native_model import MonolithModel
from worker.models.ffm import TestFFMModel, generate_ffm_examples, make_examples
from worker.models.movielens import MovieRankingModel, monolith_examples

REPO = Path(__file__).resolve().parent.parent
STEPS = 6
IDS = np.arange(-2, 60, dtype=np.int64)  # every id the tiny models can see, and some they never do


class _Losses:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def begin(self):
        pass

    def end(self):
        pass

    def before_step(self, ctx):
        return []

    def after_step(self, ctx, result):
        self.losses.append(result.loss)


def _tiny_movielens(root: Path) -> MovieRankingModel:
    return MovieRankingModel(data_dir=str(root), embedding_dim=4, batch_size=32)


@pytest.fixture(scope="module", autouse=True)
def private_user_cache(tmp_path_factory):
    """Loading the fake MovieLens files would copy them to the user's cache: keep them out of ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (model factory, dump directory)} for the repo's two models (tiny MovieLens files)."""
    root = tmp_path_factory.mktemp("dumps")
    _write_raw(root / "movielens")
    out = {"ffm": (TestFFMModel, root / "ffm"),
           "movielens": (lambda: _tiny_movielens(root / "movielens"), root / "movielens-dump")}
    from launch.cli import main

    assert main(["dump", "--model", "worker.models.ffm:TestFFMModel", "--out", str(out["ffm"][1])]) == 0
    dump_model(out["movielens"][0](), out["movielens"][1])
    return out


def _run(model, model_dir: Path) -> dict:
    hook = _Losses()
    est = Estimator(model, RunConfig(model_dir=str(model_dir), save_checkpoints_steps=STEPS), hooks=[hook])
    try:
        est.train(STEPS)
        tables = sorted(model.ctx.feature_factory.slots)
        return {"model_dir": str(model_dir), "losses": hook.losses,
                "rows": est.backend.lookup({t: IDS for t in tables}),
                "dense": [v.numpy() for v in est.dense_variables()], "eval": est.evaluate(),
                "predict": [p for _, p in zip(range(40), est.predict())]}
    finally:
        est.close()


@pytest.fixture(scope="module")
def trained(models, tmp_path_factory):
    """Each model trained from its code and from its dump, in this process."""
    root = tmp_path_factory.mktemp("trained")
    return {name: (_run(make(), root / f"{name}-code"), _run(DumpedModel(path), root / f"{name}-dump"))
            for name, (make, path) in models.items()}


@pytest.mark.parametrize("name", ["ffm", "movielens"])
def test_training_from_the_dump_equals_training_with_the_code(trained, name):
    code, dump = trained[name]
    assert len(code["losses"]) == STEPS and len(set(code["losses"])) > 1
    np.testing.assert_allclose(dump["losses"], code["losses"], rtol=0, atol=1e-6)
    assert sorted(dump["rows"]) == sorted(code["rows"])
    for table, rows in code["rows"].items():
        assert np.abs(rows).sum() > 0
        np.testing.assert_allclose(dump["rows"][table], rows, rtol=0, atol=1e-6, err_msg=table)
    assert len(dump["dense"]) == len(code["dense"])
    for a, b in zip(dump["dense"], code["dense"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert dump["eval"].keys() == code["eval"].keys()
    for key, value in code["eval"].items():
        assert dump["eval"][key] == pytest.approx(value, abs=1e-6), key
    np.testing.assert_allclose([p["ctr"] for p in dump["predict"]], [p["ctr"] for p in code["predict"]], atol=1e-6)


def _served_inputs(name: str, models) -> dict[str, tf.Tensor]:
    """40 serialized serving inputs of a model (FFM's with ids it never saw too: vocabularies of 8, not 5)."""
    if name == "ffm":
        return {"instances": tf.constant(make_examples(generate_ffm_examples([8] * 6, num_examples=40, seed=1)))}
    test = models[name][0]().data()[1]
    return {"examples": tf.constant(monolith_examples(test, 0, min(40, test.size)))}


def _signatures(saved) -> dict[str, tuple]:
    return {k: (f.structured_input_signature, f.structured_outputs) for k, f in sorted(saved.signatures.items())}


def _warmup_requests(path: Path) -> list[bytes]:
    """A warmup file's requests, each Example's request time cleared (it is the time the file was written)."""
    out = []
    for entry in read_warmup_file(path):
        request = entry.predict_log.request
        for tensor in request.inputs.values():
            examples = [example_pb2.Example.FromString(b) for b in tensor.string_val]
            for example in examples:
                example.line_id.ClearField("req_time")
            tensor.string_val[:] = [example.SerializeToString() for example in examples]
        out.append(request.SerializeToString(deterministic=True))
    return out


@pytest.fixture(scope="module")
def exported(models, trained, tmp_path_factory):
    """{name: (code export, dump export, both loaded)}: the checkpoint trained with the code, exported standalone
    with the code (`StandaloneExporter`) and from the dump (`monolith export --from-dump`, in this process)."""
    from launch.cli import main

    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name, (make, dump) in models.items():
        model_dir = trained[name][0]["model_dir"]
        code = StandaloneExporter(make(), model_dir, str(root / f"{name}-code"), global_step_as_timestamp=True)
        assert main(["export", "--from-dump", str(dump), "--model-dir", model_dir, "--export-base",
                     str(root / f"{name}-dump"), "--checkpoint", str(STEPS), "--global-step-as-timestamp"]) == 0
        dirs = (Path(code.export_saved_model().decode()), root / f"{name}-dump" / str(STEPS))
        out[name] = (*dirs, *(tf.saved_model.load(str(d)) for d in dirs))
    return out


@pytest.mark.parametrize("name", ["ffm", "movielens"])
def test_exporting_from_the_dump_serves_what_exporting_with_the_code_serves(models, exported, name):
    code_dir, dump_dir, code, dump = exported[name]
    assert _signatures(dump) == _signatures(code)
    assert sorted(code.signatures) == ["hashtable_assign", "lookup", "serving_default"]
    inputs = _served_inputs(name, models)
    want, got = code.signatures["serving_default"](**inputs), dump.signatures["serving_default"](**inputs)
    assert sorted(got) == sorted(want) == ["ctr"]
    assert len(set(np.round(want["ctr"].numpy(), 4))) > 1
    np.testing.assert_allclose(got["ctr"].numpy(), want["ctr"].numpy(), rtol=0, atol=1e-6)
    ids = {k: tf.constant(IDS) for k in code.signatures["lookup"].structured_input_signature[1]}
    for table, rows in code.signatures["lookup"](**ids).items():
        np.testing.assert_array_equal(dump.signatures["lookup"](**ids)[table].numpy(), rows.numpy())
    # the same warmup requests (MovieLens parses Monolith Examples; FFM's tf.Example parse has none)
    warmup = [d / ASSETS_EXTRA / WARMUP_FILE for d in (code_dir, dump_dir)]
    assert [w.is_file() for w in warmup] == [name == "movielens"] * 2
    if name == "movielens":
        assert len(_warmup_requests(warmup[0])) > 1
        assert _warmup_requests(warmup[1]) == _warmup_requests(warmup[0])


def test_export_from_a_missing_damaged_or_mismatched_dump_is_refused(models, trained, copied, tmp_path, caplog):
    from launch.cli import main

    model_dir = trained["ffm"][0]["model_dir"]
    base = ["export", "--model-dir", model_dir, "--export-base", str(tmp_path / "e")]
    assert main([*base, "--from-dump", str(tmp_path / "nowhere")]) == 2
    assert f"model dump directory {str(tmp_path / 'nowhere')!r} does not exist" in caplog.text
    path = copied / dump_file.DUMP_FILE
    path.write_bytes(path.read_bytes()[:-1] + b"?")
    assert main([*base, "--from-dump", str(copied)]) == 2
    assert f"{path}: checksum mismatch (the file is corrupted)" in caplog.text
    other = ["export", "--model-dir", trained["movielens"][0]["model_dir"], "--export-base", str(tmp_path / "e")]
    assert main([*other, "--from-dump", str(models["ffm"][1])]) == 1  # the dump of another model
    assert "export failed: table 'slot_0' (feature 'slot_0') is not in the checkpoint" in caplog.text
    assert not (tmp_path / "e").exists()


def test_train_from_dump_exports_the_dump_on_saving(models, tmp_path):
    """`train --from-dump --export-base`: the exporter on saving exports the dump too (not a `--model` class)."""
    import argparse

    from worker.train_main import _export_listener

    dump = str(models["ffm"][1])
    args = argparse.Namespace(model=f"dump:{dump}", from_dump=dump, model_dir=str(tmp_path / "m"),
                              export_base=str(tmp_path / "e"), export_mode="distributed", num_serving_shards=2)
    exporter = _export_listener(args)._exporter
    assert isinstance(exporter.model, DumpedModel) and exporter.num_serving_shards == 2


@pytest.mark.parametrize("args", [[], ["--model", "worker.models.ffm:TestFFMModel", "--from-dump", "d"]])
def test_export_takes_a_model_or_a_dump(args, capsys):
    from launch.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["export", "--model-dir", "m", "--export-base", "e", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert ("one of the arguments --model --from-dump is required" in err if not args
            else "argument --from-dump: not allowed with argument --model" in err)


def test_dump_records_the_model(models):
    dump = dump_file.read(models["ffm"][1])
    assert dump.format_version == dump_file.FORMAT_VERSION and dump.model_class.endswith(":TestFFMModel")
    tables = {t.name: t for t in dump.tables}
    assert sorted(tables) == [f"slot_{i}" for i in range(6)]
    # slot 0: the FTRL bias, then its FFM vector for item slot 3 (SGD)
    assert [(s.slice_name, s.dim, s.optimizer.type, s.initializer.type) for s in tables["slot_0"].segments] == [
        ("bias", 1, "ftrl", "zeros"), ("ffm_3", 4, "sgd", "random_uniform")]
    assert tables["slot_0"].segments[1].optimizer.settings["learning_rate"].float_value == pytest.approx(0.1)
    assert {f.feature_name: pb.Combiner.Name(f.combiner) for f in dump.features} == {
        f"slot_{i}": "REDUCE_SUM" for i in range(6)}
    train = next(f for f in dump.model_functions if f.mode == "train")
    assert [(h.name, h.classification, h.label_feature) for h in train.heads] == [("ctr", True, "label")]
    assert train.gradient_function and train.has_loss
    receiver = dump.serving_input_receiver
    assert [(t.name, t.dtype) for t in receiver.receiver_tensors] == [("instances", "string")]
    assert {t.name: t.is_ragged for t in receiver.features} == {**{f"slot_{i}": True for i in range(6)},
                                                                "label": False}
    assert list(receiver.parsers) == []  # FFM parses tf.Examples, not with a Monolith parser
    assert [(s.name, list(s.inputs), list(s.outputs)) for s in dump.signatures] == [
        ("serving_default", ["instances"], ["ctr"])]
    assert json.loads(dump.dense_optimizer_json)["class_name"] == "SGD"
    assert dump.params["train.per_replica_batch_size"].int_value == 64
    assert dump.params["clip_norm"].float_value == 1000.0


def test_serving_parsers_round_trip():
    from services.sample_gen import DenseFeature, ParserArgs
    from worker.model_dump import serving_parsers

    for args in [ParserArgs("instance", fidv1_features=[1, 200], dense_features=[DenseFeature("x", "float64", 3)],
                            batch_size=7, drop_rate=0.25),
                 ParserArgs("example_batch", sparse_features=["a", "b"], input_name="batch")]:
        assert serving_parsers.from_pb(pb.ServingParser.FromString(
            serving_parsers.to_pb(args).SerializeToString())) == args


def test_show_is_readable(models, capsys):
    from launch.cli import main

    assert main(["dump", "--show", str(models["movielens"][1])]) == 0
    text = capsys.readouterr().out
    assert "genres -> table genres, REDUCE_MEAN" in text
    assert "slice vec: dim 4, random_uniform(maxval=0.05, minval=-0.05), adagrad(" in text
    assert "train: heads ctr (classification)" in text and "labels label" in text
    assert "  parses examples as Monolith example: sparse uid, item, age, gender, occupation, zip, genres\n" in text


class _ScheduledModel(MonolithModel):
    def input_fn(self, mode):
        return tf.data.Dataset.from_tensors({"f": tf.ragged.constant([[1], [2, 3]], dtype=tf.int64),
                                             "label": tf.constant([0.0, 1.0])})

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("f")
        x = self.lookup_embedding_slice(features=["f"], slice_name="v", slice_dim=2,
                                        learning_rate_fn=lambda step: 0.1 / (1 + step), out_type="concat")
        pred = tf.reduce_sum(x, axis=1)
        return EstimatorSpec(label=features.get("label"), pred=pred, loss=tf.reduce_sum(pred), head_name="h")


def test_a_learning_rate_function_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"slice 'v' of table 'f' \(feature 'f'\) has a learning-rate function"):
        dump_model(_ScheduledModel(), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def copied(models, tmp_path):
    """A private copy of the FFM dump to damage."""
    import shutil

    target = tmp_path / "dump"
    shutil.copytree(models["ffm"][1], target)
    return target


def test_truncated_corrupt_foreign_and_newer_dumps_are_refused(copied):
    path = copied / dump_file.DUMP_FILE
    good = path.read_bytes()
    cases = {
        "truncated": (good[:-10], r"truncated or padded: the header announces \d+ payload bytes, the file holds \d+"),
        "header only": (good[:12], "truncated: 12 bytes"),
        "corrupt": (good[:-1] + bytes([good[-1] ^ 1]), r"checksum mismatch \(the file is corrupted\)"),
        "foreign": (b"PK\x03\x04" + good[4:], "not a model dump"),
        "newer": (good[:len(dump_file.MAGIC)] + (dump_file.FORMAT_VERSION + 1).to_bytes(4, "little")
                  + good[len(dump_file.MAGIC) + 4:], r"format version 2, but this project reads versions 1 to 1"),
        "empty": (b"", "not a model dump"),
    }
    for name, (data, message) in cases.items():
        path.write_bytes(data)
        with pytest.raises(dump_file.ModelDumpError, match=message):
            dump_file.read(copied)
        with pytest.raises(dump_file.ModelDumpError):
            DumpedModel(copied)
        assert name
    path.write_bytes(good)
    dump_file.read(copied)


def test_a_damaged_function_file_is_refused(copied):
    saved = copied / dump_file.FUNCTIONS_DIR / "saved_model.pb"
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(dump_file.ModelDumpError, match="saved_model.pb: sha256 mismatch"):
        DumpedModel(copied)
    saved.write_bytes(bytes(data[:100]))
    with pytest.raises(dump_file.ModelDumpError, match=r"saved_model.pb: 100 bytes, the dump lists \d+ \(truncated"):
        DumpedModel(copied)
    (copied / dump_file.DUMP_FILE).unlink()
    with pytest.raises(dump_file.ModelDumpError, match="holds no model_dump.pb"):
        DumpedModel(copied)


def _distributed_predictions(export: dict[str, Path], inputs: dict[str, tf.Tensor]) -> dict[str, np.ndarray]:
    """serving_default of a distributed export, the rows looked up on every serving shard (a shard gives zero
    rows for the ids it does not own, so their sum is what the serving PS shards return together)."""
    entry = tf.saved_model.load(str(export["entry"]))
    meta = json.loads((export["entry"] / ASSETS_EXTRA / ENTRY_META).read_text())
    parsed = entry.signatures["embedding_ids"](**inputs)
    keys = meta["lookup"]
    ids = {"id": parsed[keys["ids"]], "id_split": parsed[keys["id_split"]]}
    shards = [tf.saved_model.load(str(export[ps_sub_model(i)])) for i in range(meta["num_serving_shards"])]
    dims = [meta["tables"][t]["dim"] for t in meta["tables"]]
    sizes = np.diff(ids["id_split"].numpy())
    looked_up = [shard.signatures["raw_lookup"](**ids)["flat_emb"].numpy() for shard in shards]
    owned = np.stack([np.concatenate([np.abs(part.reshape(n, d)).sum(axis=1) > 0 for part, n, d in
                                      zip(np.split(flat, np.cumsum(sizes * dims)[:-1]), sizes, dims)])
                      for flat in looked_up])
    assert (owned.sum(axis=0) <= 1).all()  # an id's row is on one shard only
    assert owned.any(axis=1).all()
    serve = entry.signatures["serving_default"]
    wanted = serve.structured_input_signature[1]
    feed = {k: v for k, v in parsed.items() if k in wanted}
    feed[keys["rows"]] = tf.constant(np.sum(looked_up, axis=0))
    return {k: v.numpy() for k, v in serve(**feed).items()}


@pytest.mark.slow
def test_train_and_export_from_dump_in_a_process_without_the_models_module(models, trained, exported, tmp_path):
    """`monolith train --from-dump` trains both dumps (FFM's made by `monolith dump --model`) in a process where
    `worker.models` (MovieLens and FFM) cannot be imported: same final loss, rows and dense values as the code.
    In the same process `monolith export --from-dump --mode distributed` exports MovieLens's checkpoint trained
    with the code for 2 serving shards: entry + shards serve what the standalone export made with the code serves."""
    runs = {name: path for name, (_, path) in models.items()}
    code_dirs = {name: trained[name][0]["model_dir"] for name in runs}
    script = textwrap.dedent(f"""
        import sys
        sys.modules["worker.models"] = None  # the models' code cannot be imported in this process
        try:
            import worker.models.movielens
        except ImportError:
            pass
        else:
            raise SystemExit("worker.models is importable")
        from launch.cli import main
        for name, dump in {json.dumps({k: str(v) for k, v in runs.items()})}.items():
            assert main(["train", "--from-dump", dump, "--model-dir", f"{tmp_path}/" + name, "--max-steps", "{STEPS}",
                         "--save-checkpoints-steps", "{STEPS}", "--summary-file", f"{tmp_path}/" + name + ".json"]) == 0
        assert main(["export", "--from-dump", {str(runs["movielens"])!r}, "--model-dir", {code_dirs["movielens"]!r},
                     "--export-base", "{tmp_path}/export", "--mode", "distributed", "--num-serving-shards", "2",
                     "--global-step-as-timestamp", "--no-warmup"]) == 0
        assert "worker.models.movielens" not in sys.modules and "worker.models.ffm" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=600)
    for name in runs:
        code = trained[name][0]
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        assert summary["global_step"] == STEPS and summary["model"] == f"dump:{runs[name]}"
        assert summary["loss"] == pytest.approx(code["losses"][-1], abs=1e-6)
        state = ShardState(0, 1)
        state.restore(str(latest_checkpoint(tmp_path / name)))
        for table, rows in code["rows"].items():
            np.testing.assert_allclose(state.table(table).lookup(IDS), rows, rtol=0, atol=1e-6)
        dense = [value for _, _, value in state.dense_pull([])]
        assert len(dense) == len(code["dense"])
        for a, b in zip(dense, code["dense"]):
            np.testing.assert_allclose(a, np.reshape(b, -1), rtol=0, atol=1e-6)
    inputs = _served_inputs("movielens", models)
    want = exported["movielens"][2].signatures["serving_default"](**inputs)
    got = _distributed_predictions({p.name: p / str(STEPS) for p in (tmp_path / "export").iterdir()}, inputs)
    assert sorted(got) == sorted(want) == ["ctr"]
    np.testing.assert_allclose(got["ctr"], want["ctr"].numpy(), rtol=0, atol=1e-6)

