"""The seed's export_hooks and export_state_utils tests (facts §7.8), on our checkpoint layout
(`<model_dir>/ckpt-<step>` directories instead of `model.ckpt-<step>` prefixes)."""
from __future__ import annotations

import os
import shutil

import pytest

from protos.export_pb2 import ServingEntry, ServingModelState
from tests.tiny_models import TinyDNN
from worker.export import export_context
from worker.export.export_context import ExportMode
from worker.export.export_hooks import ExportSaverListener, get_global_step
from worker.export.export_state import (
    STATE_FILE,
    get_export_saver_listener_state,
    overwrite_export_saver_listener_state,
)
from worker.runtime.estimator import Estimator
from worker.runtime.run_config import RunConfig


class FakeExporter:
    """Stands in for a SavedModel exporter (as the seed's mock does): records calls, creates a directory."""

    def __init__(self, export_base: str, as_dict: bool = False) -> None:
        self.export_base, self.as_dict = export_base, as_dict
        self.calls: list[str] = []

    def export_saved_model(self, serving_input_receiver_fn, checkpoint_path):
        self.calls.append(checkpoint_path)
        step = get_global_step(checkpoint_path)
        if self.as_dict:
            dirs = {name: os.path.join(self.export_base, name, str(step)) for name in ("entry", "ps_0")}
            for d in dirs.values():
                os.makedirs(d)
            return {k: v.encode() for k, v in dirs.items()}
        path = os.path.join(self.export_base, str(step))
        os.makedirs(path)
        return path.encode()


def test_state_round_trip(tmp_path):
    state = ServingModelState(entries=[ServingEntry(export_dir="a", global_step=1)])
    overwrite_export_saver_listener_state(str(tmp_path), state)
    assert get_export_saver_listener_state(str(tmp_path)) == state
    assert (tmp_path / STATE_FILE).is_file() and not (tmp_path / f"{STATE_FILE}-tmp").exists()
    assert get_export_saver_listener_state(str(tmp_path / "missing")) == ServingModelState()


def _estimator(model_dir: str, keep: int = 5) -> Estimator:
    return Estimator(TinyDNN(), RunConfig(model_dir=model_dir, keep_checkpoint_max=keep))


def test_basic(tmp_path):
    model_dir, export_base = str(tmp_path / "model"), str(tmp_path / "export")
    exporter = FakeExporter(export_base)
    est = _estimator(model_dir)
    est.checkpoint_listeners.append(ExportSaverListener(model_dir, None, exporter))
    est.train(10)
    est.save(10)
    assert exporter.calls == [os.path.join(model_dir, "ckpt-10")]
    state = get_export_saver_listener_state(export_base)
    assert list(state.entries) == [ServingEntry(export_dir=os.path.join(export_base, "10"), global_step=10)]


def test_exporter_returns_dict(tmp_path):
    model_dir, export_base = str(tmp_path / "model"), str(tmp_path / "export")
    est = _estimator(model_dir)
    est.checkpoint_listeners.append(ExportSaverListener(model_dir, None, FakeExporter(export_base, as_dict=True)))
    est.train(1)
    est.save(1)
    for name in ("entry", "ps_0"):
        entries = get_export_saver_listener_state(os.path.join(export_base, name)).entries
        assert [(e.export_dir, e.global_step) for e in entries] == [(os.path.join(export_base, name, "1"), 1)]


def test_deleted(tmp_path):
    model_dir, export_base = str(tmp_path / "model"), str(tmp_path / "export")
    est = _estimator(model_dir, keep=1)
    est.checkpoint_listeners.append(ExportSaverListener(model_dir, None, FakeExporter(export_base)))
    est.train(1)
    est.save(1)
    est.train(2)
    est.save(2)
    state = get_export_saver_listener_state(export_base)
    assert [(e.export_dir, e.global_step) for e in state.entries] == [(os.path.join(export_base, "2"), 2)]
    assert sorted(p for p in os.listdir(export_base) if p != STATE_FILE) == ["2"]


def test_exempt_steps_are_kept(tmp_path):
    model_dir, export_base = str(tmp_path / "model"), str(tmp_path / "export")
    est = _estimator(model_dir, keep=1)
    est.checkpoint_listeners.append(ExportSaverListener(model_dir, None, FakeExporter(export_base),
                                                        exempt_checkpoint_paths=[f"{model_dir}/ckpt-1"]))
    for step in (1, 2, 3):
        est.train(step)
        est.save(step)
    assert [e.global_step for e in get_export_saver_listener_state(export_base).entries] == [1, 3]


def test_dense_only_keeps_the_steps_of_full_checkpoints(tmp_path):
    """A dense-only export base sits two levels under the full model directory (the seed's layout); with
    `dense_only` an export is kept while either model directory still holds its step's checkpoint, without
    it only while the listener's own model directory does (both listeners follow the same saves)."""
    full_dir, dense_dir = tmp_path / "full", str(tmp_path / "dense")
    bases = {flag: str(full_dir / "exports" / f"dense_only_{flag}") for flag in (False, True)}
    est = _estimator(dense_dir, keep=1)
    est.checkpoint_listeners.extend(ExportSaverListener(dense_dir, None, FakeExporter(base), dense_only=flag)
                                    for flag, base in bases.items())
    for step in (1, 2, 3):
        est.train(step)
        est.save(step)
        if step == 1:  # a full checkpoint of step 1 (a copy is one: the layout is the same)
            shutil.copytree(f"{dense_dir}/ckpt-1", full_dir / "ckpt-1")
    for flag, want in ((False, [3]), (True, [1, 3])):
        assert [e.global_step for e in get_export_saver_listener_state(bases[flag]).entries] == want, flag
        assert sorted(p for p in os.listdir(bases[flag]) if p != STATE_FILE) == [str(s) for s in want], flag


def test_global_step_of_checkpoint_paths():
    assert get_global_step("/m/ckpt-12") == 12 and get_global_step("/m/model.ckpt-7") == 7
    with pytest.raises(ValueError, match="not a checkpoint path"):
        get_global_step("/m/ckpt-x")


def test_export_mode_is_global_and_not_nestable():
    assert not export_context.is_exporting()
    with export_context.enter_export_mode(ExportMode.DISTRIBUTED) as ctx:
        assert export_context.is_exporting_distributed() and export_context.get_current_export_ctx() is ctx
        assert export_context.is_dry_run_or_exporting() and not export_context.is_exporting_standalone()
        with pytest.raises(RuntimeError, match="cannot be nested"), \
                export_context.enter_export_mode(ExportMode.STANDALONE):
            pass
        ctx.add_signature("ps_0", "lookup", {}, lambda: {})
        assert ctx.sub_graph_num == 1 and [s.name for s in ctx.signatures("ps_0")] == ["lookup"]
    assert not export_context.is_exporting() and export_context.get_current_export_ctx() is None


@pytest.mark.slow
def test_monolith_train_exports_after_every_checkpoint(tmp_path):
    import argparse

    from worker import train_main

    parser = argparse.ArgumentParser()
    train_main.add_arguments(parser)
    args = parser.parse_args(["--model", "tests.tiny_models:ServingDNN", "--model-dir", str(tmp_path / "m"),
                              "--max-steps", "2", "--save-checkpoints-steps", "2",
                              "--export-base", str(tmp_path / "e")])
    assert train_main.main(args) == 0    # one checkpoint, one real export (deleting old ones: the tests above)
    entries = get_export_saver_listener_state(str(tmp_path / "e")).entries
    assert [(os.path.basename(e.export_dir), e.global_step) for e in entries] == [("2", 2)]
    assert sorted(p for p in os.listdir(tmp_path / "e") if not p.startswith(".")) == ["2", STATE_FILE]
    assert (tmp_path / "e" / "2" / "saved_model.pb").is_file()
