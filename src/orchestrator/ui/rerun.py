"""Requests the UI makes from an earlier job: the same job with a new seed."""

from __future__ import annotations

from pydantic import JsonValue, TypeAdapter

from orchestrator.domain.jobs import Job
from orchestrator.domain.params import AnyRequest, GenerateRequest

_REQUEST: TypeAdapter[AnyRequest] = TypeAdapter(GenerateRequest)


def has_seed(job: Job) -> bool:
    """Whether the job's parameters carry a seed that can be changed."""
    if job.backend == "workflow":
        inputs = job.params.get("inputs")
        return isinstance(inputs, dict) and "seed" in inputs
    return "seed" in job.params


def request_body(job: Job, seed: int | None) -> dict[str, JsonValue]:
    """The generate request that repeats ``job`` (with ``seed`` when given)."""
    params: dict[str, JsonValue] = dict(job.params)
    if job.backend == "flux":
        params["model"] = job.model
    if seed is not None and has_seed(job):
        inputs = params.get("inputs")
        if job.backend == "workflow" and isinstance(inputs, dict):
            params["inputs"] = {**inputs, "seed": seed}
        else:
            params["seed"] = seed
    body: dict[str, JsonValue] = {"backend": job.backend, "params": params}
    body["priority"] = job.priority
    if job.webhook_url is not None:
        body["webhook_url"] = job.webhook_url
        if job.webhook_events is not None:
            body["webhook_events"] = list[JsonValue](job.webhook_events)
    return body


def with_new_seed(job: Job, seed: int) -> AnyRequest:
    """``job`` again with another seed, validated like any submitted request."""
    return _REQUEST.validate_python(request_body(job, seed))
