"""Random ids (answers, leases, anonymous units): unguessable, unique, fresh after a fork."""

from __future__ import annotations

import os
import re

from prism.gateway import ids


def test_ids_are_16_hex_digits_and_do_not_repeat_across_blocks() -> None:
    made = [ids.random_hex() for _ in range(ids.BLOCK_IDS * 3 + 5)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in made)
    assert len(set(made)) == len(made)


def test_a_forked_child_does_not_reuse_its_parents_block() -> None:
    ids.random_hex()  # the parent holds a block with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the id it would hand out next
        os.write(write, ids.random_hex().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    parent_next = [ids.random_hex() for _ in range(ids.BLOCK_IDS)]
    assert re.fullmatch(r"[0-9a-f]{16}", child)
    assert child not in parent_next


def test_threads_taking_ids_at_once_never_share_one() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: [ids.random_hex() for _ in range(3000)], range(4)))
    made = [i for batch in batches for i in batch]
    assert len(set(made)) == len(made) == 12000
