"""`python -m bench api`: an action through kaohe's API against the same update sent straight
to Temporal.

On a private stack with the worker and the API in this process: one unit is driven to its
talks, its assessment group is bound to a principal, and then, alternately and sequentially,
one talk through the API (`POST .../talks`: a bearer token verified against the issuer's keys,
the binding looked up in PostgreSQL, the content stored encrypted, the `record_talk` update
signed with kaohe's assertion and sent) and one stored the same way and sent straight to
Temporal with the Python client (signed too, by the client's interceptor, as the operators'
tools do). Last line: the API's p99 over the direct p99; the goal is <= 1.3.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import uvicorn

from activities.talk_store import store_talk
from bench import measure, report
from bench.latency import _unit_at_talks
from bench.stack import BENCH_KEY, private_stack
from kaohe.access.bindings import Binding, grant
from kaohe.access.issuer import DevIssuer
from kaohe.api.app import Api, create_app
from kaohe.listening import free_port
from kaohe.sim.simulate import GROUP, talk_by_reference
from schemas.common import Role
from schemas.talks import Talk
from workflows.unit import UnitAssessment

PRINCIPAL = "bench-group"


def _talk(n: int) -> dict[str, str]:
    return {
        "idempotency_key": f"api-talk-{n}",
        "talk_id": f"t{n}",
        "interviewer": "考核组成员",
        "interviewee_role": "班子成员",
        "talk_date": dt.date(2026, 12, 15).isoformat(),
        "content": f"谈话内容(保密) #{n}",
    }


async def main(*, updates: int, warmup: int, keep: bool) -> int:
    async with private_stack(keep) as stack:
        report.console.print(
            f"api: {updates} record_talk through kaohe's API and {updates} straight to "
            f"Temporal, alternating, after {warmup} of each to warm up"
        )
        queue = stack.task_queue("kaohe")
        issuer = DevIssuer.generate()
        verifier = issuer.verifier()
        app = create_app(Api(stack.client, stack.pool, verifier, BENCH_KEY))
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
        )
        serving = asyncio.create_task(server.serve())
        try:
            async with stack.kaohe_worker(queue):
                total = 2 * (updates + warmup)
                unit = await _unit_at_talks(stack, queue, planned=total + 1)
                campaign, unit_id = f"latency-{stack.run_id}", "u0001"
                async with stack.pool.acquire() as conn:
                    await grant(
                        conn,
                        Binding(campaign, PRINCIPAL, Role.ASSESSMENT_GROUP, unit_id),
                        "bench",
                    )
                headers = {"Authorization": f"Bearer {issuer.mint(PRINCIPAL)}"}
                url = f"http://127.0.0.1:{port}/v1/campaigns/{campaign}/units/{unit_id}/talks"
                through_api: list[float] = []
                direct: list[float] = []
                await measure.settle(stack)
                async with httpx.AsyncClient(timeout=30) as http:
                    for i in range(warmup + updates):
                        t0 = time.perf_counter()
                        r = await http.post(url, json=_talk(2 * i), headers=headers)
                        a = time.perf_counter() - t0
                        if r.status_code != 200:
                            raise RuntimeError(f"the API answered {r.status_code}: {r.text}")
                        talk = Talk(**_talk(2 * i + 1))
                        t0 = time.perf_counter()
                        stored = await store_talk(stack.pool, BENCH_KEY, unit.id, talk, GROUP.id)
                        await unit.execute_update(
                            UnitAssessment.record_talk, talk_by_reference(talk, stored)
                        )
                        d = time.perf_counter() - t0
                        if i >= warmup:
                            through_api.append(a)
                            direct.append(d)
        finally:
            server.should_exit = True
            await serving
        rows = [
            ("actions of each", str(updates)),
            ("straight to Temporal p50 / p99", _two(direct)),
            ("through kaohe's API p50 / p99", _two(through_api)),
        ]
        report.console.print(report.figures_table("record_talk round trips", rows))
    report.print_percentile_ratios("API", through_api, "direct", direct)
    return 0


def _two(samples: list[float]) -> str:
    return " / ".join(report.ms(measure.percentile(samples, p)) for p in (50, 99))
