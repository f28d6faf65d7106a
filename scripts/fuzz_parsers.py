#!/usr/bin/env python3
"""Fuzz every m2msec parser that sees untrusted bytes (issue 21 part 2, docs/security.md section 2).

    .venv/bin/python scripts/fuzz_parsers.py --inputs 100000            # every parser
    .venv/bin/python scripts/fuzz_parsers.py --inputs 2000 --only coap  # parsers whose name contains "coap"

Two engines. ``--engine atheris`` (coverage-guided: libFuzzer through atheris, one child process per parser, its
bytecode instrumented; needs ``pip install atheris``): libFuzzer's own ``-runs``, ``-timeout``, ``-rss_limit_mb``
bound the run, an input that raises anything else is a crash (written to ``--out``). ``--engine mutate`` (the
default, no extra dependency): a mutation fuzzer, seeded and reproducible with ``--seed``: each input is a seed of
the parser's corpus (valid messages made with the package's own encoders) mutated 1-6 times (bit flips, random
bytes, interesting bytes, deletions, duplications, dictionary tokens, splices with another seed), or plain random
bytes. Inputs with a new outcome are kept in the corpus. Each input runs under a wall-clock alarm (``--timeout``, a
hang is a finding) and the whole run under an address-space limit (``--memory``, a MemoryError is a finding).

A finding is any exception outside the parser's allowed classes (tests/fuzz/fuzz_targets*.py): the package's own
errors (m2msec.errors.M2MSecError), LibraryRefusal (h11 or cryptography's loader refused the input before m2msec
saw it, as in the service), and what the parser's caller documents and handles: m2msec.http1.HTTPError (the
gateway answers 400/413), ValueError and AttributeError of VerificationKeys.from_jwks (CCFLink.jwks turns them
into CCFLinkError). Findings are written to ``--out`` and the script exits 1. Per parser it prints: inputs tried,
exceptions by type, the largest time one input took.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import inspect
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
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


_INSTRUMENTED = frozenset({"m2msec", "h11", "fuzz_targets", "fuzz_targets_base", "fuzz_targets_services"})


def atheris_child(target: Target, inputs: int, timeout: float, memory: int, out: Path, stats: Path) -> None:
    """Run in a child process: libFuzzer drives ``target`` for ``inputs`` runs; writes the figures to ``stats``."""
    import atheris  # type: ignore[import-not-found]

    counts: collections.Counter[str] = collections.Counter()
    worst = [0.0]

    def write() -> None:
        stats.write_text(json.dumps({"inputs": counts.total(), "by_type": counts, "max_time": worst[0]}))

    def one(data: bytes) -> None:
        t0 = time.perf_counter()
        kind = "ok"
        try:
            target.run(data)
        except target.allowed as exc:
            kind = type(exc).__name__
        except BaseException as exc:  # goes on to libFuzzer: a crash, its input kept under --out
            kind = f"FINDING {type(exc).__module__}.{type(exc).__name__}"
            raise
        finally:
            worst[0] = max(worst[0], time.perf_counter() - t0)
            counts[kind] += 1
            if counts.total() % 1000 == 0 or counts.total() >= inputs or kind.startswith("FINDING"):
                write()

    corpus = stats.with_suffix(".corpus")  # the parent removes it with the figures
    corpus.mkdir()
    for n, seed in enumerate(target.seeds):
        (corpus / f"seed-{n}").write_bytes(seed)
        with contextlib.suppress(*target.allowed):
            target.run(seed)  # imports everything the target reaches before the bytecode is instrumented
    # only m2msec's own code, h11 and the targets: instrument_all() (every loaded module) costs ~40 s per parser
    for obj in gc.get_objects():
        if inspect.isfunction(obj) and (obj.__module__ or "").split(".")[0] in _INSTRUMENTED:
            with contextlib.suppress(Exception):
                atheris.instrument_func(obj)
    out.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-runs={inputs}", f"-timeout={math.ceil(timeout)}", f"-rss_limit_mb={memory}",
                   f"-malloc_limit_mb={memory}", f"-max_len={target.max_len}", f"-artifact_prefix={out}/{target.name}-",
                   "-print_final_stats=1", str(corpus)], one)
    atheris.Fuzz()


def run_atheris(target: Target, args: argparse.Namespace) -> Result:
    stats = Path(tempfile.mkstemp(prefix=f"m2msec-fuzz-{target.name}-", suffix=".json")[1])
    start = time.monotonic()
    cmd = [sys.executable, __file__, "--atheris-child", target.name, "--inputs", str(args.inputs), "--timeout",
           str(args.timeout), "--memory", str(args.memory), "--out", str(args.out), "--stats", str(stats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, PYTHONHASHSEED="0"))
    result = Result(target.name, elapsed=time.monotonic() - start)
    with contextlib.suppress(OSError, ValueError):
        figures = json.loads(stats.read_text())
        result.inputs, result.max_time = figures["inputs"], figures["max_time"]
        result.by_type.update(figures["by_type"])
    stats.unlink(missing_ok=True)
    shutil.rmtree(stats.with_suffix(".corpus"), ignore_errors=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        first = next((n for n, line in enumerate(lines) if "Uncaught Python exception" in line or "ERROR:" in line), 0)
        keep = lines[first:first + 16] + [line for line in lines if "Test unit written" in line]
        result.findings.append((f"libFuzzer exit {proc.returncode}", b"", "\n".join(keep)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per parser (default 100000)")
    parser.add_argument("--only", action="append", default=[], help="run parsers whose name contains this")
    parser.add_argument("--seed", type=int, default=21, help="random seed (default 21)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds one input may take (default 2)")
    parser.add_argument("--memory", type=int, default=2048, help="address-space limit, MiB (default 2048)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "m2msec-fuzz-findings",
                        help="where findings are written (default: $TMPDIR/m2msec-fuzz-findings)")
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate",
                        help="mutate (default) or atheris (coverage-guided, needs the atheris package)")
    parser.add_argument("--list", action="store_true", help="list the parsers and exit")
    parser.add_argument("--atheris-child", help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.atheris_child:
        child = next(t for t in TARGETS if t.name == args.atheris_child)
        atheris_child(child, args.inputs, args.timeout, args.memory, args.out, args.stats)
        return 0
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
        if args.engine == "mutate":  # libFuzzer has its own limits (and needs more address space for its shadow)
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    failed = 0
    for i, target in enumerate(targets):
        if args.engine == "atheris":
            result = run_atheris(target, args)
        else:
            rng = random.Random(f"{args.seed}/{target.name}")
            result = run_target(target, args.inputs, rng, args.timeout,
                                progress=lambda line: print(line, file=sys.stderr, flush=True))
        print(report(result), flush=True)
        if result.findings:
            failed += 1
            args.out.mkdir(parents=True, exist_ok=True)
            for n, (_kind, data, _text) in enumerate(result.findings[:50]):
                if data:
                    (args.out / f"{target.name}-{i}-{n}.bin").write_bytes(data)
            for kind, data, text in result.findings[:5]:
                print(f"    {kind}: {text}\n      input {data[:200]!r}", flush=True)
            print(f"    inputs written to {args.out}", flush=True)
    print(f"{len(targets)} parsers, {failed} with findings")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
