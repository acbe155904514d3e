"""float16 transport conversions are bit-identical to numpy's (round to nearest even, subnormals, overflow)."""
import numpy as np

from ps.kernels.half_floats import to_float16, to_float32


def test_narrowing_matches_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    halves = rng.integers(0, 0x7C00, size=(500, 16)).astype(np.uint16).view(np.float16).astype(np.float32)
    exact_ties = (halves.view(np.uint32) + np.uint32(0x1000)).view(np.float32)  # halfway between neighbours
    values = np.concatenate([
        rng.normal(size=(500, 16)), rng.normal(scale=1e-6, size=(500, 16)),  # normal and subnormal halves
        rng.normal(scale=1e5, size=(500, 16)),  # beyond float16's range: ±inf
        halves, exact_ties, -exact_ties,
    ]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = values.astype(np.float16)
    got = to_float16(values)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    out = np.empty_like(want)
    assert to_float16(values, out) is out


def test_widening_is_exact_and_reads_read_only_views():
    bits = np.arange(0, 1 << 16, dtype=np.uint16)
    bits = bits[(bits & 0x7C00) != 0x7C00].reshape(-1, 8)  # every finite float16
    halves = np.frombuffer(bits.tobytes(), np.float16).reshape(bits.shape)  # read-only, like a reply buffer
    got = to_float32(halves)
    assert got.dtype == np.float32 and got.flags.writeable
    np.testing.assert_array_equal(got, halves.astype(np.float32))
