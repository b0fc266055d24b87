"""A zarr store wrapper that records chunk reads, for tests that count what is read."""

from __future__ import annotations

import zarr


class CountingStore(zarr.storage.WrapperStore):
    """Records every chunk key read from the wrapped store."""

    def __init__(self, store):
        super().__init__(store)
        self.reads: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        if key.startswith("c/"):
            self.reads.append(key)
        return await self._store.get(key, prototype, byte_range)
