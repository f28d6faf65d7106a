"""The CI run of the parser fuzzing (issue 21 part 2): each target of fuzz_targets.py with a few hundred hypothesis
examples (random bytes and mutated seeds). The long run is scripts/fuzz_parsers.py (docs/security.md section 2)."""

from __future__ import annotations

import random

import pytest
from fuzz_targets import TARGETS, Target
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_EXAMPLES = 300


def _mutated(target: Target) -> st.SearchStrategy[bytes]:
    def mutate(seed: bytes, rnd: random.Random) -> bytes:
        buf = bytearray(seed)
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randint(0, len(buf))
            choice = rnd.randrange(4)
            if choice == 0 and buf:
                buf[rnd.randrange(len(buf))] = rnd.randrange(256)
            elif choice == 1:
                buf[pos:pos] = rnd.choice(target.dictionary) if target.dictionary else rnd.randbytes(2)
            elif choice == 2:
                del buf[pos:pos + rnd.randint(1, 16)]
            else:
                del buf[pos:]
        return bytes(buf)

    return st.builds(mutate, st.sampled_from(target.seeds), st.randoms(use_true_random=False))


# cryptography warns (and will refuse, in a later release) when it loads a certificate with a serial number <= 0:
# a warning of the loader, not an exception of m2msec's parsers (pytest turns warnings into errors)
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_parser_raises_only_its_errors(target: Target) -> None:
    @settings(max_examples=_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.one_of(st.binary(max_size=256), _mutated(target)))
    def check(data: bytes) -> None:
        try:
            target.run(data)
        except target.allowed:
            pass

    check()


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_seeds_are_accepted(target: Target) -> None:
    """The seeds are valid inputs: a target that refuses all of them would fuzz only its first check."""
    accepted = 0
    for seed in target.seeds:
        try:
            target.run(seed)
            accepted += 1
        except target.allowed:
            pass
    assert accepted > 0
