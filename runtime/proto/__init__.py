"""The Open Inference Protocol's gRPC service: ``grpc_service.proto`` and the Python code protoc
generates from it (``grpc_service_pb2``, ``grpc_service_pb2_grpc``; see ``generate``)."""
