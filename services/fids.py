"""Monolith feature ids (fids): a slot number in the high bits, a hashed signature in the low bits.

Two encodings (docs/data_formats.md): v1 puts a 10-bit slot in bits 63..54 (so slots >= 512 make
negative int64s), v2 a 15-bit slot in bits 62..48 with bit 63 always zero. Fids are handled as
unsigned 64-bit values here; `as_int64` gives the signed view the embedding tables key on.
"""
from __future__ import annotations

import numpy as np

SLOT_BITS_V1, SIG_BITS_V1 = 10, 54
SLOT_BITS_V2, SIG_BITS_V2 = 15, 48
MAX_SLOT_V1 = (1 << SLOT_BITS_V1) - 1
MAX_SLOT_V2 = (1 << SLOT_BITS_V2) - 1
MASK_V1 = (1 << SIG_BITS_V1) - 1
MASK_V2 = (1 << SIG_BITS_V2) - 1


def _check_slot(slot: int, max_slot: int, version: str) -> int:
    if isinstance(slot, bool) or not isinstance(slot, int | np.integer) or not 0 <= slot <= max_slot:
        raise ValueError(f"fid {version} slot must be an int in [0, {max_slot}], got {slot!r}")
    return int(slot)


def make_fid_v1(slot: int, signature: int) -> int:
    """(slot << 54) | low 54 bits of the signature, as an unsigned 64-bit value."""
    return (_check_slot(slot, MAX_SLOT_V1, "v1") << SIG_BITS_V1) | (int(signature) & MASK_V1)


def make_fid_v2(slot: int, signature: int) -> int:
    """(slot << 48) | low 48 bits of the signature; bit 63 stays zero."""
    return (_check_slot(slot, MAX_SLOT_V2, "v2") << SIG_BITS_V2) | (int(signature) & MASK_V2)


def slot_v1(fid) -> np.ndarray | int:
    if isinstance(fid, int | np.integer):
        return (int(fid) & 0xFFFFFFFFFFFFFFFF) >> SIG_BITS_V1
    return np.asarray(fid).astype(np.uint64) >> np.uint64(SIG_BITS_V1)


def slot_v2(fid) -> np.ndarray | int:
    if isinstance(fid, int | np.integer):
        return ((int(fid) & 0xFFFFFFFFFFFFFFFF) >> SIG_BITS_V2) & MAX_SLOT_V2
    return (np.asarray(fid).astype(np.uint64) >> np.uint64(SIG_BITS_V2)) & np.uint64(MAX_SLOT_V2)


def v1_to_v2(fid) -> np.ndarray | int:
    """Keep the low 48 signature bits and move the v1 slot to bits 62..48 (v1 bits 48..53 are lost)."""
    if isinstance(fid, int | np.integer):
        return (int(fid) & MASK_V2) | (slot_v1(fid) << SIG_BITS_V2)
    f = np.asarray(fid).astype(np.uint64)
    return (f & np.uint64(MASK_V2)) | (slot_v1(f) << np.uint64(SIG_BITS_V2))


def as_int64(fids) -> np.ndarray:
    """The signed int64 view of unsigned fids (the same 64 bits), as embedding tables key them."""
    return np.asarray(fids, dtype=np.uint64).view(np.int64)


def gen_fids_v1(slot: int, size: int, rng: np.random.Generator | None = None) -> list[int]:
    """`size` random v1 fids of `slot` (random 54-bit signatures)."""
    rng = rng or np.random.default_rng()
    sigs = rng.integers(0, MASK_V1, size=size, dtype=np.uint64, endpoint=True)
    return [make_fid_v1(slot, int(s)) for s in sigs]


def gen_fids_v2(slot: int, size: int, rng: np.random.Generator | None = None) -> list[int]:
    """`size` random v2 fids of `slot` (random 48-bit signatures)."""
    rng = rng or np.random.default_rng()
    sigs = rng.integers(0, MASK_V2, size=size, dtype=np.uint64, endpoint=True)
    return [make_fid_v2(slot, int(s)) for s in sigs]
