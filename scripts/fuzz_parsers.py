#!/usr/bin/env python3
"""Fuzz every m2msec parser that sees untrusted bytes (issue 21 part 2, docs/security.md section 2).

    .venv/bin/python scripts/fuzz_parsers.py --inputs 100000            # every parser
    .venv/bin/python scripts/fuzz_parsers.py --inputs 2000 --only coap  # parsers whose name contains "coap"

A mutation fuzzer (seeded, reproducible with ``--seed``): each input is a seed of the parser's corpus (valid
messages made with the package's own encoders) mutated 1-6 times (bit flips, random bytes, interesting bytes,
deletions, duplications, dictionary tokens, splices with another seed), or plain random bytes. Inputs that raised
something new are kept in the corpus. Each input runs under a wall-clock alarm (``--timeout``, a hang is a finding)
and the whole run under an address-space limit (``--memory``, a MemoryError is a finding).

A finding is any exception that is not one of the parser's allowed classes: the package's own errors
(m2msec.errors.M2MSecError and its subclasses), plus the documented ValueError subclasses a parser names (pydantic's
ValidationError for the wire models, m2msec.http1.HTTPError for the HTTP reader). Findings are written to
``--out`` (one file per input) and the script exits 1. Per parser it prints: inputs tried, exceptions by type, the
largest time one input took.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import random
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fuzz"))

from fuzz_targets import TARGETS, Target


class Hang(BaseException):
    """Raised by the alarm inside an input that ran over ``--timeout``."""


_INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x0d", b"\x0e", b"\x0f", b"\xfe", b"\x01\x00", b"\xff\xff",
                b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\r\n", b"\n", b" ", b"\t", b"%", b"/", b"//", b".",
                b"..", b",", b";", b":", b"=", b"\"", b"'", b"\\", b"\xc3\xa9", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80",
                b"\xef\xbb\xbf", b"0", b"9" * 20, b"-1", b"\u0660".decode("latin-1").encode("utf-8")]


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], dictionary: list[bytes], max_len: int) -> bytes:
    """1-6 random mutations of ``data``; never longer than ``max_len``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(10)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # a random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # delete a slice
            buf[pos:pos + rng.randint(1, 16)] = b""
        elif op == 4 and buf:  # duplicate a slice
            start = rng.randrange(len(buf))
            chunk = buf[start:start + rng.randint(1, 64)]
            buf[pos:pos] = chunk * rng.randint(1, 4)
        elif op == 5:  # an interesting token
            tok = rng.choice(_INTERESTING)
            if rng.random() < 0.5 and buf:
                buf[pos:pos + len(tok)] = tok
            else:
                buf[pos:pos] = tok
        elif op == 6 and dictionary:  # a dictionary token of the format
            tok = rng.choice(dictionary)
            buf[pos:pos] = tok
        elif op == 7 and corpus:  # splice with another input
            other = rng.choice(corpus)
            cut = rng.randint(0, len(other))
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 8 and buf:  # truncate
            del buf[rng.randint(0, len(buf)):]
        elif buf:  # add or subtract a small number at a byte
            i = rng.randrange(len(buf))
            buf[i] = (buf[i] + rng.randint(-16, 16)) % 256
    return bytes(buf[:max_len])


@dataclass
class Result:
    name: str
    inputs: int = 0
    by_type: collections.Counter[str] = field(default_factory=collections.Counter)
    findings: list[tuple[str, bytes, str]] = field(default_factory=list)
    max_time: float = 0.0
    elapsed: float = 0.0


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise Hang


def run_target(target: Target, inputs: int, rng: random.Random, timeout: float,
               progress: Callable[[str], None] | None = None) -> Result:
    """Feed ``inputs`` inputs to ``target``; the allowed exceptions are counted, any other is a finding."""
    result = Result(target.name)
    corpus = list(target.seeds)
    seen_kinds: set[str] = set()
    start = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    for n in range(inputs):
        if corpus and rng.random() < 0.95:
            data = mutate(rng, rng.choice(corpus), corpus, target.dictionary, target.max_len)
        else:
            data = rng.randbytes(rng.randint(0, 64))
        t0 = time.perf_counter()
        kind = "ok"
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            target.run(data)
        except Hang:
            kind = "HANG"
            result.findings.append((kind, data, f"over {timeout} s"))
        except target.allowed as exc:
            kind = type(exc).__name__
        except (Exception, RecursionError, MemoryError) as exc:
            kind = f"FINDING {type(exc).__module__}.{type(exc).__name__}"
            result.findings.append((kind, data, repr(exc)[:300]))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.perf_counter() - t0
        result.max_time = max(result.max_time, took)
        result.by_type[kind] += 1
        result.inputs += 1
        if kind not in seen_kinds and len(corpus) < 4096:  # a new outcome: keep the input to mutate further
            seen_kinds.add(kind)
            corpus.append(data)
        elif rng.random() < 0.002 and len(corpus) < 4096:
            corpus.append(data)
        if progress is not None and (n + 1) % 20000 == 0:
            progress(f"  {target.name}: {n + 1} inputs, {time.monotonic() - start:.0f} s")
    result.elapsed = time.monotonic() - start
    return result


def report(result: Result) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result.by_type.items(), key=lambda kv: -kv[1]))
    status = f"{len(result.findings)} FINDINGS" if result.findings else "0 findings"
    return (f"{result.name:<24} inputs {result.inputs:>7}  max/input {result.max_time * 1000:8.2f} ms  "
            f"total {result.elapsed:6.1f} s  {status}\n{'':<24} {kinds}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per parser (default 100000)")
    parser.add_argument("--only", action="append", default=[], help="run parsers whose name contains this")
    parser.add_argument("--seed", type=int, default=21, help="random seed (default 21)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds one input may take (default 2)")
    parser.add_argument("--memory", type=int, default=2048, help="address-space limit, MiB (default 2048)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "m2msec-fuzz-findings",
                        help="where findings are written (default: $TMPDIR/m2msec-fuzz-findings)")
    parser.add_argument("--list", action="store_true", help="list the parsers and exit")
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if not args.only or any(o in t.name for o in args.only)]
    if args.list:
        for t in TARGETS:
            print(f"{t.name:<24} {t.what}")
        return 0
    if not targets:
        print(f"no parser matches {args.only}", file=sys.stderr)
        return 2
    limit = args.memory * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    failed = 0
    for i, target in enumerate(targets):
        rng = random.Random(f"{args.seed}/{target.name}")
        result = run_target(target, args.inputs, rng, args.timeout,
                            progress=lambda line: print(line, file=sys.stderr, flush=True))
        print(report(result), flush=True)
        if result.findings:
            failed += 1
            args.out.mkdir(parents=True, exist_ok=True)
            for n, (_kind, data, _text) in enumerate(result.findings[:50]):
                (args.out / f"{target.name}-{i}-{n}.bin").write_bytes(data)
            for kind, data, text in result.findings[:5]:
                print(f"    {kind}: {text}\n      input {data[:200]!r}", flush=True)
    print(f"{len(targets)} parsers, {failed} with findings")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
