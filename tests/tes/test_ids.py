"""Task ids (tesp_api/tes/ids.py): random RFC 4122 version-4 UUIDs from a buffered CSPRNG, never
repeated across a fork (api.workers forks API processes after ids may have been made)."""

from __future__ import annotations

import os
import uuid

from tesp_api.tes.ids import is_safe_id, new_task_id


def test_ids_are_version_4_rfc_4122_uuids_in_canonical_form() -> None:
    for _ in range(600):  # more than one 4 KiB buffer of random bytes
        task_id = new_task_id()
        parsed = uuid.UUID(task_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, task_id)


def test_ids_do_not_repeat() -> None:
    ids = [new_task_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_the_parents_next_ids() -> None:
    new_task_id()  # the buffer now holds bytes the parent will use next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids, exit at once
        os.close(read)
        os.write(write, " ".join(new_task_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    parent = [new_task_id() for _ in range(8)]
    assert len(child) == 8
    assert not set(child) & set(parent)


def test_a_trailing_newline_is_not_a_safe_id() -> None:
    assert is_safe_id(new_task_id())
    assert not is_safe_id(new_task_id() + "\n")
