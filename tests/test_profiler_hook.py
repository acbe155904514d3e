"""Tf2ProfilerHook: Monolith's profile-dump counts for step and second windows (real TF profiler)."""
import glob
import os
import time

import pytest
import tensorflow as tf

from worker.modeling.hooks.base import StepContext, StepResult
from worker.modeling.hooks.profiler import Tf2ProfilerHook

pytestmark = pytest.mark.slow


def count_profiles(logdir) -> int:
    """Profile runs (Monolith's `plugins/profile/*`); each must hold a TensorBoard `.xplane.pb` dump."""
    runs = glob.glob(os.path.join(logdir, "plugins", "profile", "*"))
    for run in runs:
        assert glob.glob(os.path.join(run, "*.xplane.pb")), f"no xplane dump in {run}"
    return len(runs)


def train(hook, steps, sleep=0.15, start=0):
    """Monolith's test loop: a global step incremented by a train op, `sleep` seconds per step."""
    step_var = tf.Variable(start, dtype=tf.int64)
    train_op = tf.function(lambda: step_var.assign_add(1))
    for _ in range(steps):
        ctx = StepContext(global_step=int(step_var.numpy()))
        hook.before_step(ctx)
        train_op()
        time.sleep(sleep)
        hook.after_step(ctx, StepResult(global_step=int(step_var.numpy())))


def test_validation():
    with pytest.raises(ValueError, match=r"end must be > start, got \(5, 5\)"):
        Tf2ProfilerHook("/tmp/x", init_step_range=(5, 5))
    with pytest.raises(ValueError, match=r"save_steps \(10\) must be greater than the profiling window \(10\)"):
        Tf2ProfilerHook("/tmp/x", init_step_range=(0, 10), save_steps=10)
    with pytest.raises(ValueError, match=r"save_steps \(10\) must be greater"):
        Tf2ProfilerHook("/tmp/x", save_steps=10)
    with pytest.raises(ValueError, match="not both"):
        Tf2ProfilerHook("/tmp/x", save_steps=50, save_secs=1)


def test_one_step(tmp_path):
    hook = Tf2ProfilerHook(str(tmp_path), init_step_range=(0, 10), save_steps=50)
    hook.begin()
    train(hook, 1)
    hook.end()
    assert count_profiles(tmp_path) == 1


def test_step_windows(tmp_path):
    hook = Tf2ProfilerHook(str(tmp_path), init_step_range=(0, 10), save_steps=30)
    hook.begin()
    train(hook, 30)
    assert count_profiles(tmp_path) == 1
    assert hook.windows == [(0, 10)]
    train(hook, 1, start=30)
    hook.end()
    assert count_profiles(tmp_path) == 2
    assert hook.windows == [(0, 10), (30, 40)]


def test_seconds_1(tmp_path):
    hook = Tf2ProfilerHook(str(tmp_path), init_step_range=(0, 10), save_secs=1)
    hook.begin()
    train(hook, 10)
    hook.end()
    assert count_profiles(tmp_path) >= 1


def test_seconds_2(tmp_path):
    hook = Tf2ProfilerHook(str(tmp_path), init_step_range=(0, 10), save_secs=3)
    hook.begin()
    train(hook, 21)
    hook.end()
    assert count_profiles(tmp_path) >= 2
    assert hook.windows[0] == (0, 10) and hook.windows[1][0] >= 10


def test_default_window_is_deferred_500_steps(tmp_path):
    hook = Tf2ProfilerHook(str(tmp_path))
    hook.begin()
    train(hook, 500, sleep=0)
    assert hook.windows == [] and count_profiles(tmp_path) == 0
    train(hook, 2, sleep=0, start=500)
    hook.end()
    assert hook.windows == [(500, 510)]
    assert count_profiles(tmp_path) == 1
