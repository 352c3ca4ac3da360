"""Serving: the inference handler, the local endpoint server, endpoint deployment and breed prediction.

* :mod:`dogclf.serving.handler`: ``model_fn``/``input_fn``/``predict_fn``/``output_fn``, shared by the local
  endpoint and SageMaker's stock PyTorch inference container.
* :mod:`dogclf.serving.server`: the local HTTP endpoint with dynamic batching.
* :class:`EndpointDeployer`: deploy an artifact on the local backend or SageMaker and get an endpoint handle.
* :class:`BreedPredictor`: predict breeds from photos through an endpoint or in-process.
"""

from __future__ import annotations

from dogclf.serving.deployer import DeployConfig, EndpointDeployer
from dogclf.serving.endpoint import CostWarning, Endpoint, InProcessEndpoint, LocalEndpoint
from dogclf.serving.predictor import BreedPredictor, BreedScore, Prediction
from dogclf.serving.package import pack_artifact, write_code_dir
from dogclf.serving.server import ServerConfig

__all__ = [
    "BreedPredictor",
    "BreedScore",
    "Prediction",
    "CostWarning",
    "DeployConfig",
    "Endpoint",
    "EndpointDeployer",
    "InProcessEndpoint",
    "LocalEndpoint",
    "ServerConfig",
    "pack_artifact",
    "write_code_dir",
]
