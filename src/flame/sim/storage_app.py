"""The storage service's FastAPI app: every route of :mod:`flame.sim.storage`, built on first use.

The sidecar answers the requests a run makes from plain handlers (:mod:`flame.sim.storage`); this app
answers the rest (refusals, intermediate results, tags, reads), and is imported only when one comes.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, cast

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from flame.disclosure.dp import laplace_noise
from flame.sim import intermediate_crypto
from flame.sim.auth import current_node, service_claims
from flame.sim.storage import (
    LOCALDP_MAX_BYTES,
    _base_url,
    _claim,
    _CleanupStreamingResponse,
    _close,
    _file_size,
    _release,
    _service_of,
    check_filename,
    final_prefix,
    intermediate_key,
    is_valid_tag,
    local_key,
    parse_single_number,
    register_analysis,
)

if TYPE_CHECKING:
    from flame.sim.stack import FlameStack

Claims = Annotated[dict[str, Any], Depends(service_claims)]


def create_app(stack: FlameStack) -> FastAPI:
    """The storage service of every node of ``stack`` (the node comes from the request scope)."""
    register_analysis(stack.analysis_id, stack.project_id)
    service = _service_of(stack)
    app = FastAPI(
        title="FLAME node storage service (emulated)",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )

    # -- final results ------------------------------------------------------------------------------

    @app.put("/final", status_code=204)
    @app.put("/final/", status_code=204, include_in_schema=False)
    async def put_final(request: Request, claims: Claims, file: Annotated[UploadFile, File()]) -> Response:
        await service.put_final(current_node(request), str(claims["client_id"]), file)
        return Response(status_code=204)

    @app.put("/final/localdp", status_code=204)
    async def put_final_localdp(
        request: Request,
        claims: Claims,
        file: Annotated[UploadFile, File()],
        epsilon: Annotated[float, Form()],
        sensitivity: Annotated[float, Form()],
    ) -> Response:
        node = current_node(request)
        analysis_id = str(claims["client_id"])
        filename = check_filename(file.filename)
        try:
            value = parse_single_number(await file.read(LOCALDP_MAX_BYTES + 1))
        except ValueError:
            raise HTTPException(400, "Uploaded file must contain a single numerical value.") from None
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise HTTPException(400, "epsilon must be a finite number greater than 0.")
        if not (math.isfinite(sensitivity) and sensitivity > 0):
            raise HTTPException(400, "sensitivity must be a finite number greater than 0.")
        service.require_bucket(analysis_id, "Result")
        # OpenDP's Laplace mechanism, as PrivateAIM's result service uses (sample_laplace: a reference)
        noisy = await asyncio.to_thread(laplace_noise, value, sensitivity / epsilon)
        content = repr(noisy).encode()
        await service.put_bytes(final_prefix(analysis_id) + filename, content)
        service.record("storage.upload", node, area="final", size=len(content), filename=filename)
        service.record(
            "storage.final",
            node,
            analysis_id=analysis_id,
            filename=filename,
            size=len(content),
            localdp=True,
            epsilon=epsilon,
            sensitivity=sensitivity,
        )
        return Response(status_code=204)

    # -- intermediate results -----------------------------------------------------------------------

    @app.put("/intermediate")
    @app.put("/intermediate/", include_in_schema=False)
    async def put_intermediate(
        request: Request,
        claims: Claims,
        file: Annotated[UploadFile, File()],
        remote_node_id: Annotated[str, Form()],
    ) -> JSONResponse:
        node = current_node(request)
        analysis_id = str(claims["client_id"])
        service.require_bucket(analysis_id, "Temp")
        receiver = stack.node_by_id(remote_node_id)
        if receiver is None:
            raise HTTPException(404, f"Remote node with ID {remote_node_id} does not exist.")
        if not getattr(receiver, "storage_public_key_published", True):
            raise HTTPException(400, f"Remote node with ID {remote_node_id} does not provide a public key")
        object_id = str(uuid.uuid4())
        size = await asyncio.to_thread(_file_size, file)
        reader = intermediate_crypto.EncryptingReader(
            file.file,
            node.storage_key,
            receiver.storage_key.public_key(),
            context=object_id.encode(),
        )
        stored = intermediate_crypto.encrypted_size(size)
        await service.backend.put(intermediate_key(analysis_id, object_id), cast(BinaryIO, reader), stored)
        service.record(
            "storage.upload",
            node,
            area="intermediate",
            size=size,
            stored=stored,
            object_id=object_id,
            receiver=receiver.name,
        )
        url = f"{_base_url(request)}/intermediate/{object_id}?remote_node_id={node.node_id}"
        return JSONResponse({"url": url, "object_id": object_id})

    @app.get("/intermediate/{object_id}")
    async def get_intermediate(
        request: Request, claims: Claims, object_id: uuid.UUID, remote_node_id: str
    ) -> Response:
        node = current_node(request)
        analysis_id = str(claims["client_id"])
        oid = str(object_id)
        key = intermediate_key(analysis_id, oid)
        missing = HTTPException(404, f"Object with ID {oid} does not exist")
        if not await service.backend.exists(key):
            raise missing
        sender = stack.node_by_id(remote_node_id)
        if sender is None:
            raise HTTPException(404, f"Remote node with ID {remote_node_id} does not exist.")
        if not getattr(sender, "storage_public_key_published", True):
            raise HTTPException(400, f"Remote node with ID {remote_node_id} does not provide a public key")
        if not _claim(key):
            raise missing
        raw = service.backend.open(key)
        plain = intermediate_crypto.decrypt_stream(
            raw, node.storage_key, sender.storage_key.public_key(), context=oid.encode()
        )
        try:
            first = await plain.__anext__()
        except BaseException as exc:
            await _close(plain)
            await _close(raw)
            _release(key)
            if isinstance(exc, KeyError):
                raise missing from None
            if isinstance(exc, intermediate_crypto.DecryptionError):
                raise HTTPException(
                    400,
                    f"Failed to decrypt file with ID {oid} which was encrypted by node {remote_node_id}.",
                ) from None
            raise

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in plain:
                yield chunk
            # Read completely: the object is gone (before the claim is released).
            service.record("storage.read", node, area="intermediate", object_id=oid, sender=sender.name)
            try:
                await service.backend.delete(key)
            except Exception as exc:  # the real service logs a failed delete and answers anyway
                service.record(
                    "storage.delete_failed", node, area="intermediate", object_id=oid, error=repr(exc)
                )
            else:
                service.record("storage.delete", node, area="intermediate", object_id=oid)

        async def cleanup() -> None:
            try:
                await _close(plain)
                await _close(raw)
            finally:
                _release(key)

        return _CleanupStreamingResponse(body(), cleanup)

    # -- local results ------------------------------------------------------------------------------

    @app.put("/local")
    @app.put("/local/", include_in_schema=False)
    async def put_local(
        request: Request,
        claims: Claims,
        file: Annotated[UploadFile, File()],
        tag: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        answer = await service.put_local(
            current_node(request), str(claims["client_id"]), file, tag, _base_url(request)
        )
        return JSONResponse(answer)

    @app.get("/local/tags")
    async def get_tags(request: Request, claims: Claims) -> JSONResponse:
        project = service.project(str(claims["client_id"]))
        return JSONResponse(await service.tags(current_node(request), project, _base_url(request)))

    @app.post("/local/tags")
    async def post_tag(
        request: Request,
        claims: Claims,
        tag_name: str,
        object_id: uuid.UUID,
        filename: str | None = None,
    ) -> JSONResponse:
        node = current_node(request)
        project = service.project(str(claims["client_id"]))
        oid = str(object_id)
        if not await service.backend.exists(local_key(node.node_id, project, oid)):
            raise HTTPException(404, f"Object with ID {oid} does not exist")
        if not is_valid_tag(tag_name):
            raise HTTPException(400, f"Invalid tag `{tag_name}`")
        recorded = await service.write_marker(
            node, project, tag_name, oid, check_filename(filename) if filename else None
        )
        return JSONResponse({"filename": recorded, "url": f"{_base_url(request)}/local/{oid}"})

    @app.get("/local/tags/{tag_name}")
    async def get_tagged(request: Request, claims: Claims, tag_name: str) -> JSONResponse:
        project = service.project(str(claims["client_id"]))
        return JSONResponse(
            await service.tagged(current_node(request), project, tag_name, _base_url(request))
        )

    @app.get("/local/{object_id}")
    async def get_local(request: Request, claims: Claims, object_id: uuid.UUID) -> Response:
        node = current_node(request)
        project = service.project(str(claims["client_id"]))
        oid = str(object_id)
        raw = service.backend.open(local_key(node.node_id, project, oid))
        try:
            first = await raw.__anext__()
        except StopAsyncIteration:
            first = b""
        except BaseException as exc:
            await _close(raw)
            if isinstance(exc, KeyError):
                raise HTTPException(404, f"Object with ID {oid} does not exist") from None
            raise
        service.record("storage.read", node, area="local", object_id=oid)

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in raw:
                yield chunk

        async def cleanup() -> None:
            await _close(raw)

        return _CleanupStreamingResponse(body(), cleanup)

    return app
