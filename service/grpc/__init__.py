"""gRPC front ends (docs/grpc.md): the Open Inference Protocol's GRPCInferenceService
(``oip``), TensorFlow Serving's PredictionService and ModelService (``tfs``), the standard
health service and reflection, on ``LAYERSCOPE_GRPC_PORT`` (``server``). Every call goes
through ``service.api.resolve`` and ``compute``, like the REST protocols.

Imported only in processes that serve (Gunicorn workers, ``python -m service.grpc``):
never in the Gunicorn master, which must not start gRPC's threads before it forks."""
