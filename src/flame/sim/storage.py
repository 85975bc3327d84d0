"""PLACEHOLDER being replaced by the storage service implementation."""
from typing import Any
from fastapi import FastAPI
def create_app(stack: Any) -> FastAPI:
    return FastAPI()
async def read_final_results(stack: Any, analysis_id: str) -> dict[str, bytes]:
    return {}
