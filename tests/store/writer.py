"""A key-registering process for the store tests: ``writer.py URL COUNT {random|counter}``.

Registers COUNT keys (master key from $M2MSEC_MASTER_KEY) and prints each RelativeKeyID once the store has
acknowledged it. ``counter`` draws ids from 0, 1, 2... like every other writer does, so concurrent writers
collide on purpose and must each find an unused id.
"""

from __future__ import annotations

import itertools
import sys

from m2msec.keys.secret import SecretKey
from m2msec.store import open_store


def main() -> None:
    url, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    options = {}
    attempts = 8
    if mode == "counter":
        counter = itertools.count()
        options["new_id"] = lambda: f"{next(counter):032x}"
        attempts = 1_000_000
    with open_store(url, **options) as store:  # type: ignore[arg-type]
        print("ready", flush=True)
        for i in range(count):
            key = store.register_key(SecretKey.generate(32), source_id=f"CAE{i}", suid=12, target_ids=["/CSE1/CB"],
                                     expires=4e9, attempts=attempts)
            print(key.relative_key_id, flush=True)


if __name__ == "__main__":
    main()
