"""PLACEHOLDER: pod orchestrator (being written)."""
from typing import Any
from fastapi import FastAPI
class PodOrchestrator:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
    async def run(self) -> None:
        pass
def create_app(stack: Any) -> FastAPI:
    return FastAPI()
