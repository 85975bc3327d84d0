"""PLACEHOLDER being replaced by the hub adapter and Kong implementation."""
from typing import Any
from fastapi import FastAPI
def create_hub_adapter_app(stack: Any) -> FastAPI:
    return FastAPI()
def create_kong_app(stack: Any) -> FastAPI:
    return FastAPI()
