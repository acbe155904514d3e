import numpy as np
import pytest
import tensorflow as tf

from worker.modeling.learning_rate_functions import LearningRateFunction, PolynomialDecay


def test_original_values_and_str():
    fn = PolynomialDecay(initial_learning_rate=0.01, decay_steps=10, end_learning_rate=0.11)
    assert fn.value(1) == pytest.approx(0.02, abs=1e-12)
    assert fn.value(2) == pytest.approx(0.03, abs=1e-12)
    assert float(fn(tf.constant(1, tf.int64))) == pytest.approx(0.02, abs=1e-7)
    assert float(fn(2)) == pytest.approx(0.03, abs=1e-7)
    twin = PolynomialDecay(initial_learning_rate=0.01, decay_steps=10, end_learning_rate=0.11)
    assert str(fn) == str(twin) and fn == twin and hash(fn) == hash(twin)
    assert str(fn) == (
        "PolynomialDecay(cycle=False,decay_steps=10,end_learning_rate=0.11,"
        "initial_learning_rate=0.01,name=None,power=1.0)"
    )
    other = PolynomialDecay(initial_learning_rate=0.01, decay_steps=10, end_learning_rate=0.12)
    assert str(fn) != str(other) and fn != other


def test_global_step_default():
    step = tf.compat.v1.train.get_or_create_global_step()
    step.assign(1)
    try:
        fn = PolynomialDecay(0.01, 10, end_learning_rate=0.11)
        assert float(fn()) == pytest.approx(0.02, abs=1e-7)
    finally:
        step.assign(0)


@pytest.mark.parametrize("cycle", [False, True])
@pytest.mark.parametrize("power", [1.0, 0.5, 2.0])
def test_matches_keras_schedule(cycle, power):
    kwargs = dict(initial_learning_rate=0.1, decay_steps=7, end_learning_rate=0.001, power=power, cycle=cycle)
    ours = PolynomialDecay(**kwargs)
    reference = tf.keras.optimizers.schedules.PolynomialDecay(**kwargs)
    steps = np.arange(31)
    expected = np.array([float(reference(int(s))) for s in steps])
    np.testing.assert_allclose([ours.value(int(s)) for s in steps], expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ours(tf.constant(steps)).numpy(), expected, rtol=1e-6, atol=1e-8)


def test_usable_in_tf_function():
    fn = PolynomialDecay(1.0, 4, end_learning_rate=0.0, cycle=True)
    traced = tf.function(lambda s: fn(s), input_signature=[tf.TensorSpec([], tf.int64)])
    assert [float(traced(tf.constant(s, tf.int64))) for s in (0, 2, 4, 6)] == pytest.approx([1.0, 0.5, 0.0, 0.25])


def test_adagrad_with_schedule_matches_original_values():
    """The original's dense-optimizer test: step stays 0, so the rate is the initial 3.0."""
    fn = PolynomialDecay(3.0, 10, end_learning_rate=11.0)
    var0, var1 = tf.Variable([1.0, 2.0]), tf.Variable([3.0, 4.0])
    opt = tf.compat.v1.train.AdagradOptimizer(lambda: fn(0), initial_accumulator_value=0.1)
    for _ in range(3):
        opt.apply_gradients([(tf.constant([0.1, 0.1]), var0), (tf.constant([0.01, 0.01]), var1)])
    np.testing.assert_allclose(var0.numpy(), [-1.6026098728179932, -0.6026098728179932], rtol=1e-6)
    np.testing.assert_allclose(var1.numpy(), [2.715679168701172, 3.715679168701172], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(initial_learning_rate=float("nan"), decay_steps=1), "initial_learning_rate"),
        (dict(initial_learning_rate=0.1, decay_steps=0), "decay_steps"),
        (dict(initial_learning_rate=0.1, decay_steps=2.5), "decay_steps"),
        (dict(initial_learning_rate=0.1, decay_steps=1, end_learning_rate="x"), "end_learning_rate"),
        (dict(initial_learning_rate=0.1, decay_steps=1, power=-1.0), "power"),
        (dict(initial_learning_rate=0.1, decay_steps=1, cycle=1), "cycle"),
    ],
)
def test_bad_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PolynomialDecay(**kwargs)


def test_bad_step_and_abstract_base():
    with pytest.raises(ValueError, match="step"):
        PolynomialDecay(0.1, 10).value(-1)
    with pytest.raises(TypeError):
        LearningRateFunction()
