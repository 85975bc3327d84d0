"""PLACEHOLDER being replaced by the storage backends."""
from pathlib import Path
from typing import Any, Protocol
class StorageBackend(Protocol):
    async def aclose(self) -> None: ...
class LocalFolderBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
    async def aclose(self) -> None:
        pass
