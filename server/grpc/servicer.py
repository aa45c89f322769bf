"""GRPCInferenceService: unpack the message, make one call on the InferenceService, pack the answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from server.core import deadline
from server.core.errors import InvalidArgument, ModelBridgeError
from server.core.service import InferenceService
from server.grpc import converters as conv
from server.grpc._generated import grpc_service_pb2 as pb
from server.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from server.grpc.errors import rpc_errors, status_of

log = logging.getLogger("modelbridge.grpc")
Context: TypeAlias = grpc.aio.ServicerContext


def _one_repository(name: str) -> None:
    if name:
        raise InvalidArgument(
            f"unknown repository '{name[:140]}': this server has one model repository; leave repository_name empty"
        )


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @rpc_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.service.live)

    @rpc_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    @rpc_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, request.version))

    @rpc_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return conv.server_metadata_to_proto(self.service.server_metadata())

    @rpc_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        return conv.model_metadata_to_proto(self.service.model_metadata(request.name, request.version))

    @rpc_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        return conv.model_config_to_proto(self.service.model_config(request.name, request.version))

    @rpc_errors
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        return await self._infer(request, context.time_remaining())

    async def _infer(self, request: pb.ModelInferRequest, remaining: float | None = None) -> pb.ModelInferResponse:
        req = conv.infer_request_from_proto(request)
        deadline.merge(req.parameters, remaining)   # the call's deadline bounds the time spent queued
        response = await self.service.infer(req)
        return conv.infer_response_to_proto(response)

    @rpc_errors
    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Triton's stream semantics: one response per request, in order; a failed request answers
        # with error_message (and its id) and the stream carries on.
        async for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                if not isinstance(exc, ModelBridgeError):
                    log.exception("stream inference on model %r failed unexpectedly", request.model_name)
                _, message = status_of(exc)
                yield pb.ModelStreamInferResponse(
                    error_message=message,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, model_version=request.model_version, id=request.id
                    ),
                )

    @rpc_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        if request.version and not request.name:
            raise InvalidArgument("a statistics request with a version needs a model name")
        return conv.statistics_to_proto(self.service.statistics(request.name, request.version))

    @rpc_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        _one_repository(request.repository_name)
        return conv.repository_index_to_proto(self.service.repository_index(ready_only=request.ready))

    @rpc_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        _one_repository(request.repository_name)
        config, files = conv.load_parameters_from_proto(request.parameters)
        # Loading reads files and builds an onnxruntime session: keep it off the event loop.
        await asyncio.to_thread(self.service.load, request.model_name, config_text=config, files=files or None)
        return pb.RepositoryModelLoadResponse()

    @rpc_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        _one_repository(request.repository_name)
        # "unload_dependents" is accepted and has nothing to act on: there are no ensembles.
        await asyncio.to_thread(self.service.unload, request.model_name)
        return pb.RepositoryModelUnloadResponse()
