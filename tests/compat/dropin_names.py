"""What tinkex does with each public name of the official ``tinker`` package (see test_dropin_table).

A name of surface ``tinker`` / ``tinker.types`` / ``tinker.<Class>`` that tinkex has at the same
place (``tinkex``, ``tinkex.types``, ``tinkex.<Class>``) needs no entry. The rest is either an
equivalent under another spelling (``EQUIVALENTS``: a Python expression the test evaluates with
``tinkex`` imported, so it cannot go stale) or not applicable, with the reason (``NOT_APPLICABLE``).
"""

from __future__ import annotations

from typing import Dict, List

#: official qualified name -> a tinkex expression that must evaluate (shown in the README).
EQUIVALENTS: Dict[str, str] = {
    "tinker.BackcompatSamplingClientFuture": "tinkex.SamplingClient.result",
    "tinker.APIStatusError.status_code": "tinkex.APIStatusError('x', status_code=400).status_code",
    "tinker.types.GetServerCapabilitiesResponse": "tinkex.types.ServerCapabilities",
    "tinker.types.ClientConfigRequest": "tinkex.types.ClientConfig",
    "tinker.types.ClientConfigResponse": "tinkex.types.ClientConfig",
    "tinker.types.ClientDynamicConfigResponse": "tinkex.types.DynamicConfig",
    "tinker.types.UntypedAPIFuture": "tinkex.types.SamplePromise",
    "tinker.types.FutureRetrieveResponse": "(tinkex.types.TryAgainResponse, tinkex.types.RequestFailedResponse)",
    "tinker.types.FuturesRetrieveRequest": "tinkex.types.RetrieveFuturesRequest",
    "tinker.types.FuturesRetrieveResponse": "tinkex.types.RetrieveFuturesResponse",
    "tinker.types.SamplingSessionFuturesTarget": "tinkex.types.SamplingSessionTarget",
    "tinker.types.FutureFinished": "tinkex.types.FutureCompletion",
    "tinker.types.FutureFailed": "tinkex.types.FutureCompletion",
    "tinker.types.ClientSessionFinishReason": "tinkex.types.FinishSessionRequest",
    "tinker.types.ClientSessionFinishReasonType": "tinkex.ServiceClient.close",
    "tinker.types.ClientSessionFinishSuccess": "tinkex.ServiceClient.close",
    "tinker.types.ClientSessionFinishErrored": "tinkex.ServiceClient.close",
    "tinker.types.ClientSessionFinishInterrupted": "tinkex.ServiceClient.close",
}

TRAINING = "training: tinkex is a sampling SDK"
REST = "REST and admin API of the hosted service (runs, checkpoints, sessions, billing, auth)"
INTERNAL = "internal wire body: tinkex's session, heartbeat and telemetry code builds and reads it"
TORCH = "PyTorch conversion: tinkex does not depend on torch (use to_numpy/from_numpy)"
HTTPX = "httpx request options: tinkex takes ServiceClient(timeout=, max_retries=) and sample(timeout=)"
AUDIO = "audio (dmel) prompt chunks: neither tinkex nor its local server handles audio"
HOSTED = "hosted-service specifics (console URLs, credential helpers, experimental features)"

#: reason -> official qualified names.
NOT_APPLICABLE: Dict[str, List[str]] = {
    TRAINING: [
        "tinker.AdamOptimizerConfig", "tinker.AdamParams", "tinker.BackcompatTrainingClientFuture", "tinker.Checkpoint",
        "tinker.CheckpointType", "tinker.Datum", "tinker.DimuonOptimizerConfig", "tinker.DimuonParams",
        "tinker.ForwardBackwardOutput", "tinker.LoraConfig", "tinker.LossHandle", "tinker.ModelID",
        "tinker.OptimParams", "tinker.OptimStepRequest", "tinker.OptimStepResponse",
        "tinker.ParsedCheckpointTinkerPath",
        "tinker.PerDatumLossFn", "tinker.PromptProvenanceSpan", "tinker.SampledProvenanceSpan",
        "tinker.TrainingClient", "tinker.TrainingRun",
        "tinker.ServiceClient.copy_weights", "tinker.ServiceClient.create_custom_loss",
        "tinker.ServiceClient.create_lora_training_client", "tinker.ServiceClient.create_lora_training_client_async",
        "tinker.ServiceClient.create_training_client_from_state",
        "tinker.ServiceClient.create_training_client_from_state_async",
        "tinker.ServiceClient.create_training_client_from_state_with_optimizer",
        "tinker.ServiceClient.create_training_client_from_state_with_optimizer_async",
        "tinker.types.AdamOptimizerConfig", "tinker.types.AdamParams", "tinker.types.Checkpoint",
        "tinker.types.CheckpointType", "tinker.types.CheckpointsListResponse", "tinker.types.CopyWeightsRequest",
        "tinker.types.CopyWeightsResponse", "tinker.types.CreateCustomLossRequest",
        "tinker.types.CreateCustomLossResponse", "tinker.types.CreateModelRequest", "tinker.types.CreateModelResponse",
        "tinker.types.CustomLossGraph", "tinker.types.CustomLossInput", "tinker.types.CustomLossInputRank",
        "tinker.types.CustomLossNode", "tinker.types.Datum", "tinker.types.DimuonOptimizerConfig",
        "tinker.types.DimuonParams", "tinker.types.ExternalWeightsUrlsResponse", "tinker.types.ForwardBackwardInput",
        "tinker.types.ForwardBackwardOutput", "tinker.types.ForwardBackwardRequest", "tinker.types.ForwardRequest",
        "tinker.types.GetInfoRequest", "tinker.types.GetInfoResponse", "tinker.types.LoadWeightsRequest",
        "tinker.types.LoadWeightsResponse", "tinker.types.LoraConfig", "tinker.types.LossFnInputs",
        "tinker.types.LossFnOutput", "tinker.types.LossFnType", "tinker.types.ModelData", "tinker.types.ModelID",
        "tinker.types.OptimParams", "tinker.types.OptimStepRequest", "tinker.types.OptimStepResponse",
        "tinker.types.OptimizerConfig", "tinker.types.ParsedCheckpointTinkerPath", "tinker.types.PromptProvenanceSpan",
        "tinker.types.ProvenanceSpans", "tinker.types.SampledProvenanceSpan", "tinker.types.SamplingClientKind",
        "tinker.types.SaveWeightsExternalRequest", "tinker.types.SaveWeightsExternalResponse",
        "tinker.types.SaveWeightsExternalResponseInternal", "tinker.types.SaveWeightsForSamplerRequest",
        "tinker.types.SaveWeightsForSamplerResponse", "tinker.types.SaveWeightsForSamplerResponseInternal",
        "tinker.types.SaveWeightsRequest", "tinker.types.SaveWeightsResponse", "tinker.types.TrainingRun",
        "tinker.types.TrainingRunsResponse", "tinker.types.UnloadModelRequest", "tinker.types.UnloadModelResponse",
        "tinker.types.WeightsInfoResponse",
    ],
    REST: [
        "tinker.AdminClient", "tinker.RestClient", "tinker.ServiceClient.create_rest_client",
        "tinker.types.AccessibleSearchOwner", "tinker.types.ActiveSessionStatusQuery", "tinker.types.AuditLogEntry",
        "tinker.types.AuditLogResponse", "tinker.types.AuthTokenResponse", "tinker.types.BillingEventInfo",
        "tinker.types.BillingUsageEvent", "tinker.types.BillingUsageResponse", "tinker.types.BillingUsageSession",
        "tinker.types.CancelledSessionStatusQuery", "tinker.types.CheckpointBillingEvent",
        "tinker.types.ClientFinishedSessionStatusQuery", "tinker.types.ClientSessionFinished",
        "tinker.types.CurrentCheckpointStorageUsageItem", "tinker.types.CurrentCheckpointStorageUsageResponse",
        "tinker.types.Cursor", "tinker.types.FailedSessionStatusQuery", "tinker.types.GetBillingUsageRequest",
        "tinker.types.GetCurrentCheckpointStorageUsageRequest", "tinker.types.GetSessionResponse",
        "tinker.types.HealthResponse", "tinker.types.ListSessionsResponse", "tinker.types.OwnSearchOwner",
        "tinker.types.SamplingPrefillBillingEvent", "tinker.types.SamplingSampleBillingEvent",
        "tinker.types.SearchOwner", "tinker.types.SessionActive", "tinker.types.SessionCancelled",
        "tinker.types.SessionFailed", "tinker.types.SessionFailedReason", "tinker.types.SessionFailedRequestReason",
        "tinker.types.SessionFailedSamplingSessionReason", "tinker.types.SessionFailedTrainingRunReason",
        "tinker.types.SessionSearchCursor", "tinker.types.SessionSearchRequest", "tinker.types.SessionSearchResponse",
        "tinker.types.SessionStatus", "tinker.types.SessionStatusQuery", "tinker.types.SessionSummary",
        "tinker.types.StorageBillingEvent", "tinker.types.TrainingBillingEvent", "tinker.types.UserSearchOwner",
        "tinker.types.WhoamiResponse",
    ],
    INTERNAL: [
        "tinker.ServiceClient.holder", "tinker.types.EventType", "tinker.types.RequestID",
        "tinker.types.SessionEndEvent", "tinker.types.SessionHeartbeatResponse", "tinker.types.SessionStartEvent",
        "tinker.types.Severity", "tinker.types.TelemetryBatch", "tinker.types.TelemetryEvent",
        "tinker.types.TelemetryResponse", "tinker.types.TelemetrySendRequest", "tinker.types.UnhandledExceptionEvent",
    ],
    TORCH: ["tinker.TensorData.from_torch", "tinker.TensorData.from_torch_sparse", "tinker.TensorData.to_torch"],
    HTTPX: ["tinker.RequestOptions", "tinker.Timeout", "tinker.APIStatusError.response"],
    AUDIO: ["tinker.DmelChunk", "tinker.types.DmelChunk"],
    HOSTED: ["tinker.ExperimentalWarning", "tinker.auth", "tinker.ServiceClient.get_console_url"],
}
