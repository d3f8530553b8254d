"""Integrators reach every action over Temporal's HTTP API: the README's examples, run."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from kaohe.client import data_converter
from kaohe.sim.simulate import wait_for_status
from schemas.common import Stage
from tests.conftest import Stack
from tests.helpers import sample_unit, start_unit


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


async def decoded(stack: Stack, payloads: dict[str, Any]) -> dict[str, Any]:
    """An encrypted result as an integrator reads it: through the codec (what the codec
    server's /decode runs; see tests/test_codec.py for the server itself)."""
    [payload] = payloads["payloads"]
    proto = json_format.ParseDict(payload, Payload())
    codec = data_converter(stack.settings).payload_codec
    assert codec is not None
    [plain] = await codec.decode([proto])
    return json.loads(plain.data)


def update_body(name: str, payload: dict[str, Any], update_id: str) -> dict[str, Any]:
    """The body of README's `curl .../update/{name}` example."""
    return {
        "request": {
            "input": {"name": name, "args": {"payloads": [payload]}},
            "meta": {"updateId": update_id},
        },
        "waitPolicy": {"lifecycleStage": "UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED"},
    }


async def test_update_and_signal_over_http(stack: Stack, client: Client, worker: str) -> None:
    handle = await start_unit(client, worker, sample_unit())
    base = f"{stack.temporal.http_url}/api/v1/namespaces/default/workflows/{handle.id}"
    ack = {"idempotency_key": "http-ack", "actor": {"id": "oa-system", "role": "integrator"}}

    status, body = await asyncio.to_thread(
        post, f"{base}/update/acknowledge_notice", update_body("acknowledge_notice", ack, "u1")
    )
    assert status == 200, body
    assert (await decoded(stack, body["outcome"]["success"]))["stage"] == "report_back"

    # A rejection comes back as a failure naming the field.
    bad = {
        "idempotency_key": "http-bad",
        "actor": {"id": "oa", "role": "unit"},
        "kind": "cadre",
        "title": "述职报告",
        "text": "...",
    }
    status, body = await asyncio.to_thread(
        post, f"{base}/update/submit_report", update_body("submit_report", bad, "u2")
    )
    assert status == 200, body
    assert "cadre_id" in body["outcome"]["failure"]["message"]

    # Signals: fire and forget, with the same payload.
    close = {
        "idempotency_key": "http-close",
        "actor": {"id": "d", "role": "department"},
        "stage": "report_back",
        "reason": "HTTP 关闭",
    }
    status, body = await asyncio.to_thread(post, f"{base}/signal/close_stage", {"input": [close]})
    assert status == 200, body
    closed = await wait_for_status(handle, lambda s: s.stage == Stage.EVALUATION)
    assert closed.stage == Stage.EVALUATION
