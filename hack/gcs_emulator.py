"""PyPI's ``gcp-storage-emulator`` (its own command line: ``python hack/gcs_emulator.py start
--in-memory ...``) without its one cost that grows with the bucket: on every write, in memory
too, it serialises the metadata of every object it holds to a ``.meta`` file, which only a
folder-backed emulator reads back (when it starts). Its server answers one request at a time, so
at the thousands of objects a real-node session leaves, each write held up every other request
(an ad-hoc probe of 2026-12-02: 105 ms a write at 3000 objects on an idle machine, 5.7 at none;
a trainer's stop then outlasted its grace period in CI). Everything else is the emulator as
published: the tests, the benches and the pods speak GCS' JSON API to it.
"""

from __future__ import annotations

import sys

from gcp_storage_emulator import storage
from gcp_storage_emulator.__main__ import main

_write_config_to_file = storage.Storage._write_config_to_file


def _write_unless_in_memory(self: storage.Storage) -> None:
    if not self._use_memory_fs:
        _write_config_to_file(self)


storage.Storage._write_config_to_file = _write_unless_in_memory  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
