#!/usr/bin/env python3
"""Crash consistency of the key stores: ``kill -9`` writers at random points, then check the store.

    python scripts/crash_consistency.py [--kills 200] [--scenario NAME ...] [--max-delay 0.4] [--seed N]

Each scenario is a *writer command* (a process that prints ``ready``, then ``ack <payload>`` once the store has
acknowledged a write) and a *check* (opens the store, finds what every acknowledged payload promised). The
harness (:func:`campaign`) starts the writer, waits a random time after ``ready``, sends SIGKILL, collects the
acknowledgements (the ones still in the pipe too), and runs the check; it repeats for ``--kills`` rounds on the
same store, so every round also opens a store left by a killed writer. A new store (MAF/MEF documents, CCF) plugs
in as one more :class:`Scenario`. Prints one line per scenario: kills, keys acknowledged, lost, partial, unclean
(a store that did not open or a record that did not decrypt); exits 1 when any of the last three is not 0 or a
writer failed by itself.

Scenarios:
  keys-add     ``m2msec keys add`` (the CLI code, one store open per key) into the SQLite PSK store
  keys-import  ``m2msec keys import`` of TOML tables of 4 entries: each table is in the store whole or not at all
  maf-store    the MAF/MEF key store (``m2msec.store``, SQLite backend): register_key, sealed records
  gateway      ``m2msec gateway --db`` started on the store and killed at a random point while ``keys add`` writes
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: the check's verdict on the store after one round
Verdict = tuple[int, int]  # (lost: acknowledged but missing or wrong, partial: half-written records)

READY_TIMEOUT = 60.0


@dataclass
class Scenario:
    name: str
    #: the writer's argv for round n
    writer: Callable[[int], Sequence[str]]
    #: (every acknowledged payload so far, those of this round) -> Verdict; raises when the store does not open
    check: Callable[[list[str], list[str]], Verdict]
    #: started beside the writer and killed at its own random point (e.g. the gateway reading the store)
    bystander: Callable[[int], Sequence[str]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: keys one acknowledgement stands for (an import acknowledges a whole table)
    keys_per_ack: int = 1


@dataclass
class Result:
    name: str
    kills: int = 0
    keys: int = 0
    lost: int = 0
    partial: int = 0
    unclean: int = 0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.name:<12} kills={self.kills} keys={self.keys} lost={self.lost} partial={self.partial} "
                f"unclean={self.unclean}")


def _read_lines(stream: object, out: list[str], ready: threading.Event) -> None:
    for line in stream:  # type: ignore[attr-defined]
        if line == "ready\n":
            ready.set()
        elif line.startswith("ack ") and line.endswith("\n"):  # a line cut by the kill acknowledges nothing
            out.append(line[4:].strip())
    ready.set()  # EOF: the writer is gone


def kill_round(argv: Sequence[str], delay: float, env: dict[str, str],
               bystander: tuple[Sequence[str], float] | None = None) -> tuple[list[str], int, str]:
    """Run ``argv``; SIGKILL it ``delay`` s after its ``ready``. Its acknowledgements, exit code, stderr tail."""
    acks: list[str] = []
    ready = threading.Event()
    full_env = {**os.environ, **env}
    other = None
    if bystander is not None:
        other = subprocess.Popen(bystander[0], env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, env=full_env, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err)
        assert proc.stdout is not None
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, acks, ready), daemon=True)
        reader.start()
        try:
            ready.wait(READY_TIMEOUT)
            start = time.monotonic()
            if other is not None and bystander is not None:
                time.sleep(bystander[1])
                other.kill()
            time.sleep(max(0.0, delay - (time.monotonic() - start)))
            proc.send_signal(signal.SIGKILL)
            code = proc.wait(timeout=30)
            reader.join(timeout=30)  # the file object reads to EOF: nothing buffered is dropped
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if other is not None and other.poll() is None:
                other.kill()
            if other is not None:
                other.wait()
            proc.stdout.close()
        err.seek(0)
        tail = err.read()[-500:]
    return acks, code, tail


def campaign(scenario: Scenario, kills: int, *, max_delay: float = 0.4, rng: random.Random | None = None,
             log: Callable[[str], None] | None = None) -> Result:
    """``kills`` rounds of writer + SIGKILL + check on one store (the harness any store plugs into)."""
    rng = rng or random.Random()
    result = Result(scenario.name)
    acknowledged: list[str] = []
    for n in range(kills):
        delay = rng.uniform(0.0, max_delay)
        # the bystander (a gateway) needs ~1 s to start: killed anywhere from its imports to serving
        side = (scenario.bystander(n), rng.uniform(0.0, max_delay + 1.5)) if scenario.bystander else None
        acks, code, err = kill_round(scenario.writer(n), delay, scenario.env, side)
        if code != -signal.SIGKILL:  # not a kill: the writer failed by itself (reported, and the run fails)
            result.errors.append(f"round {n}: writer exited {code} before the kill: {err.strip()[-200:]}")
        else:
            result.kills += 1
        acknowledged += acks
        try:
            lost, partial = scenario.check(acknowledged, acks)
        except Exception as exc:  # the store did not open cleanly: that is the finding
            result.unclean += 1
            result.errors.append(f"round {n}: {type(exc).__name__}: {exc}")
            continue
        result.lost = max(result.lost, lost)
        result.partial = max(result.partial, partial)
        if log is not None and (n + 1) % 20 == 0:
            log(f"  {scenario.name}: {n + 1} kills, {len(acknowledged) * scenario.keys_per_ack} keys")
    try:  # at the end: every acknowledged record decrypts, not only this round's
        lost, partial = scenario.check(acknowledged, acknowledged)
        result.lost, result.partial = max(result.lost, lost), max(result.partial, partial)
    except Exception as exc:
        result.unclean += 1
        result.errors.append(f"final check: {type(exc).__name__}: {exc}")
    result.keys = len(acknowledged) * scenario.keys_per_ack
    return result


# -- the scenarios ------------------------------------------------------------------------------------------------
def _key_of(seed: str, identity: str) -> str:
    """The key a writer stores for ``identity``: derived, so the check knows it without the writer saying it."""
    return hashlib.sha256(f"{seed}/{identity}".encode()).hexdigest()


_KEYS_ADD = """
import hashlib, os, sys
from m2msec.cli.main import build_parser, main
db, prefix, seed = sys.argv[1:4]
build_parser()  # the subcommands' imports: the kills should land in the writes, not there
print("ready", flush=True)
for i in range(10**9):
    ident = f"{prefix}-{i}"
    os.environ["CRASH_KEY"] = hashlib.sha256(f"{seed}/{ident}".encode()).hexdigest()
    if main(["keys", "--db", db, "add", "--identity", ident, "--key-env", "CRASH_KEY"]) != 0:
        sys.exit(3)
    print("ack", ident, flush=True)
"""

_KEYS_IMPORT = """
import hashlib, os, sys
from m2msec.cli.main import build_parser, main
db, prefix, seed, tmp = sys.argv[1:5]
build_parser()
print("ready", flush=True)
for i in range(10**9):
    idents = [f"{prefix}-{i}-{j}" for j in range(4)]
    path = os.path.join(tmp, f"{prefix}-{i}.toml")
    with open(path, "w") as fh:
        for ident in idents:
            key = hashlib.sha256(f"{seed}/{ident}".encode()).hexdigest()
            fh.write(f'[[psk]]\\nidentity = "{ident}"\\nkey = "{key}"\\n')
    os.chmod(path, 0o600)
    if main(["keys", "--db", db, "import", path]) != 0:
        sys.exit(3)
    print("ack", " ".join(idents), flush=True)
"""

_STORE_WRITER = """
import hashlib, sys
from m2msec.keys.secret import SecretKey
from m2msec.store import open_store
url = sys.argv[1]
with open_store(url) as store:
    print("ready", flush=True)
    for i in range(10**9):
        kc = SecretKey.generate(32)
        key = store.register_key(kc, source_id=f"CAE{i}", suid=12, target_ids=["/CSE1/CB"], expires=4e9)
        print("ack", key.relative_key_id, hashlib.sha256(kc.reveal()).hexdigest()[:16], flush=True)
"""


def _psk_check(db: Path, seed: str, group: int = 1) -> Callable[[list[str], list[str]], Verdict]:
    def check(everything: list[str], new: list[str]) -> Verdict:
        from m2msec.keys.sqlite_store import SQLitePSKStore

        with SQLitePSKStore(db) as store:
            stored = {row.identity for row in store.list()}
            lost = {ident for line in everything for ident in line.split() if ident not in stored}
            for ident in (i for line in new for i in line.split()):
                entry = store.lookup(ident)  # decrypts; a tampered or half-written row raises
                if entry is None or entry.key.reveal().hex() != _key_of(seed, ident):
                    lost.add(ident)
            partial = 0
            if group > 1:  # an import is whole or absent
                groups: dict[str, int] = {}
                for ident in stored:
                    groups[ident.rsplit("-", 1)[0]] = groups.get(ident.rsplit("-", 1)[0], 0) + 1
                partial = sum(1 for count in groups.values() if count != group)
        return len(lost), partial
    return check


def _store_check(url: str, master_hex: str) -> Callable[[list[str], list[str]], Verdict]:
    def check(everything: list[str], new: list[str]) -> Verdict:
        from m2msec.keys.secret import SecretKey
        from m2msec.store import open_store
        from m2msec.store.records import KIND_MAF_KEY

        with open_store(url, SecretKey.from_hex(master_hex)) as store:
            stored = set(store.ids(KIND_MAF_KEY))
            lost = {line.split()[0] for line in everything if line.split()[0] not in stored}
            for line in new:
                rkid, _, digest = line.partition(" ")
                key = store.get_key(rkid)  # decrypts and authenticates the record
                if key is None or hashlib.sha256(key.kc.reveal()).hexdigest()[:16] != digest:
                    lost.add(rkid)
        return len(lost), 0
    return check


def scenarios(workdir: Path, seed: str) -> dict[str, Scenario]:
    py = sys.executable
    master = {"M2MSEC_MASTER_KEY": hashlib.sha256(f"master/{seed}".encode()).hexdigest()}
    out: dict[str, Scenario] = {}
    db = workdir / "add" / "keys.db"  # its master key file DB.key is created by the first (maybe killed) writer
    db.parent.mkdir(mode=0o700)
    out["keys-add"] = Scenario("keys-add", lambda n: [py, "-c", _KEYS_ADD, str(db), f"r{n}", seed],
                               _psk_check(db, seed))
    idb = workdir / "import" / "keys.db"
    idb.parent.mkdir(mode=0o700)
    tables = workdir / "import" / "tables"
    tables.mkdir(mode=0o700)
    out["keys-import"] = Scenario("keys-import",
                                  lambda n: [py, "-c", _KEYS_IMPORT, str(idb), f"r{n}", seed, str(tables)],
                                  _psk_check(idb, seed, group=4), keys_per_ack=4)
    url = f"sqlite://{workdir / 'maf' / 'maf.db'}"
    (workdir / "maf").mkdir(mode=0o700)
    out["maf-store"] = Scenario("maf-store", lambda n: [py, "-c", _STORE_WRITER, url],
                                _store_check(url, master["M2MSEC_MASTER_KEY"]), env=master)
    gdb = workdir / "gateway" / "keys.db"
    gdb.parent.mkdir(mode=0o700)
    subprocess.run([py, "-c", _KEYS_ADD.replace("10**9", "1"), str(gdb), "seed", seed], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)  # the gateway refuses a store that does not exist

    def gateway(n: int) -> list[str]:
        return [py, "-m", "m2msec", "gateway", "--db", str(gdb), "--listen", "127.0.0.1:0",
                "--coaps-listen", "127.0.0.1:0", "--backend", "http://127.0.0.1:9"]
    out["gateway"] = Scenario("gateway", lambda n: [py, "-c", _KEYS_ADD, str(gdb), f"r{n}", seed],
                              _psk_check(gdb, seed), bystander=gateway)
    return out


def run(names: Sequence[str], kills: int, *, max_delay: float, seed: int,
        log: Callable[[str], None] | None = None) -> list[Result]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="m2msec-crash-") as tmp:
        os.chmod(tmp, 0o700)
        table = scenarios(Path(tmp), str(seed))
        return [campaign(table[name], kills, max_delay=max_delay, rng=rng, log=log) for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="kills per scenario (default 200)")
    parser.add_argument("--scenario", action="append", choices=["keys-add", "keys-import", "maf-store", "gateway"])
    parser.add_argument("--max-delay", type=float, default=0.4, help="kill up to this long after ready (s)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    names = args.scenario or ["keys-add", "keys-import", "maf-store", "gateway"]
    print(f"seed={seed}", flush=True)
    started = time.monotonic()
    results = run(names, args.kills, max_delay=args.max_delay, seed=seed,
                  log=lambda s: print(s, file=sys.stderr, flush=True))
    bad = False
    for result in results:
        print(result.line(), flush=True)
        for error in result.errors[:5]:
            print(f"  {error}", flush=True)
        bad |= bool(result.lost or result.partial or result.unclean or result.errors)
    print(f"total kills={sum(r.kills for r in results)} keys={sum(r.keys for r in results)} "
          f"lost={sum(r.lost for r in results)} in {time.monotonic() - started:.0f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
