"""PLACEHOLDER being replaced by the broker implementation."""
from typing import Any
from fastapi import FastAPI
class Broker:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
    async def aclose(self) -> None:
        pass
def create_app(stack: Any) -> FastAPI:
    return FastAPI()
