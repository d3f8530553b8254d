"""`python -m bench vote`: raters voting through the voting page's `POST /v1/vote`, against a
bare endpoint that does one INSERT per sheet.

On a private stack with the worker and kaohe's API in this process: `--meetings` units are
driven to their evaluation and their tokens issued (`--raters` each, rater groups A/B/C at
20/40/40%). Then one client per meeting (as many in flight as meetings) posts its raters'
sheets one after the other, in an order of its own, as the page does: the token looked up
by its hash, the sheet checked against the unit's ballot, the token spent and the sheet
pooled, the pool flushed and the batch registered with the unit when a rater group may go.
Every answer must be 200 with a receipt, and at the end each unit must count all of its
sheets. The same sheets also go through `POST /bench/bare` on the same app and server (JSON
body read, one INSERT of the sheet into a table of the bench's own) at the same concurrency:
in `--rounds` slices, each slice of votes followed by the same slice bare, so that load
from elsewhere on the machine weighs on both sides alike; each side's time is the sum of
its slices. Last line: vote sheets/s over bare sheets/s; the goal is >= 0.5. The
goal for the whole vote is also shown: 20 meetings of 100 raters within 2 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import Request

from activities.db import create_pool
from bench import measure, report
from bench.stack import BENCH_KEY, BENCH_POLICY, BenchStack, private_stack
from kaohe.access.issuer import DevIssuer
from kaohe.api.app import Api, create_app
from kaohe.ingest.ballot_io import token_source
from kaohe.listening import free_port
from kaohe.sim.simulate import drive_unit, sheet_for, simulated_unit, wait_for_status
from schemas.common import Stage
from schemas.roster import UnitSpec
from workflows.unit import UnitAssessment

GOAL_SECONDS = 120.0
BARE_TABLE = "CREATE TABLE IF NOT EXISTS bench_bare_sheets (sheet jsonb NOT NULL)"


def _groups(raters: int) -> tuple[int, int, int]:
    a = max(1, raters // 5)
    b = max(1, (raters - a) // 2)
    return a, b, max(1, raters - a - b)


async def _meetings(
    stack: BenchStack, queue: str, campaign: str, meetings: int, raters: int, cadres: int
) -> list[tuple[UnitSpec, list[dict[str, Any]]]]:
    """The units in evaluation, each with its raters' requests (token and sheet)."""
    tokens = token_source(stack.pool)
    units = [
        simulated_unit(f"m{i:03d}", cadres, _groups(raters), name="基准会场")
        for i in range(meetings)
    ]

    async def ready(unit: UnitSpec) -> tuple[UnitSpec, list[dict[str, Any]]]:
        handle = await stack.start_unit(queue, campaign, unit)
        await drive_unit(
            stack.client,
            handle.id,
            unit,
            tokens=tokens,
            policy=BENCH_POLICY,
            stop_at=Stage.EVALUATION,
        )
        issued = await tokens(handle.id)
        rng = random.Random(unit.unit_id)
        requests = []
        for group_tokens in issued.values():
            for token in group_tokens:
                sheet = sheet_for(token, unit, BENCH_POLICY.ballots, rng).model_dump(mode="json")
                del sheet["token"]
                requests.append(
                    {"token": token, "unit": {"campaign": campaign, "unit": unit.unit_id},
                     "sheet": sheet}
                )  # fmt: skip
        rng.shuffle(requests)  # raters vote in an order of their own
        return unit, requests

    return list(await asyncio.gather(*(ready(u) for u in units)))


async def _post_all(
    clients: list[httpx.AsyncClient],
    url: str,
    per_client: list[list[dict[str, Any]]],
    check: Callable[[httpx.Response], None],
) -> tuple[float, list[float]]:
    """Each client posts its requests in turn, all clients at once: wall time, latencies."""
    latencies: list[float] = []

    async def one(http: httpx.AsyncClient, requests: list[dict[str, Any]]) -> None:
        for body in requests:
            t0 = time.perf_counter()
            r = await http.post(url, json=body)
            latencies.append(time.perf_counter() - t0)
            check(r)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(h, reqs) for h, reqs in zip(clients, per_client, strict=True)))
    return time.perf_counter() - t0, latencies


@dataclass
class Sides:
    """Each side's summed wall time, its latencies and the CPU it cost, per process."""

    vote_wall: float
    vote_latency: list[float]
    bare_wall: float
    bare_latency: list[float]
    cpu: dict[str, dict[str, float]]  # side -> process -> CPU seconds

    def cpu_rows(self, side: str, wall: float) -> list[tuple[str, str]]:
        return [
            (f"{side}: CPU {name}", f"{used:.1f} s ({measure.ratio(used, wall):.0%} of wall)")
            for name, used in self.cpu[side].items()
        ]


async def _alternating(
    stack: BenchStack, base: str, per_client: list[list[dict[str, Any]]], rounds: int
) -> Sides:
    """The votes in `rounds` slices, each followed by as many bare INSERTs, so that both
    sides see the same machine (others' load comes and goes): each side's summed wall time
    and its latencies."""
    vote_wall = bare_wall = 0.0
    vote_latency: list[float] = []
    bare_latency: list[float] = []
    cpu: dict[str, dict[str, float]] = {"vote": {}, "bare": {}}

    def add_cpu(side: str, before: dict[str, float]) -> None:
        for name, used in measure.cpu_snapshot(stack).items():
            cpu[side][name] = cpu[side].get(name, 0.0) + used - before[name]

    async with contextlib.AsyncExitStack() as clients:
        # One client (a phone) per meeting, its connection kept, made before any timing.
        http = [
            await clients.enter_async_context(httpx.AsyncClient(timeout=60)) for _ in per_client
        ]
        for n in range(rounds):
            part = [r[n * len(r) // rounds : (n + 1) * len(r) // rounds] for r in per_client]
            await measure.settle(stack)
            before = measure.cpu_snapshot(stack)
            wall, latency = await _post_all(http, f"{base}/v1/vote", part, _accepted)
            add_cpu("vote", before)
            vote_wall += wall
            vote_latency += latency
            await measure.settle(stack)
            before = measure.cpu_snapshot(stack)
            wall, latency = await _post_all(http, f"{base}/bench/bare", part, _stored)
            add_cpu("bare", before)
            bare_wall += wall
            bare_latency += latency
    return Sides(vote_wall, vote_latency, bare_wall, bare_latency, cpu)


def _accepted(r: httpx.Response) -> None:
    if r.status_code != 200 or r.json().get("state") != "accepted":
        raise RuntimeError(f"POST /v1/vote answered {r.status_code}: {r.text[:500]}")


def _stored(r: httpx.Response) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"POST /bench/bare answered {r.status_code}: {r.text[:500]}")


async def main(*, meetings: int, raters: int, cadres: int, rounds: int, keep: bool) -> int:
    async with private_stack(keep) as stack:
        sheets = meetings * raters
        report.console.print(
            f"vote: {meetings} meetings x {raters} raters ({cadres} cadres each) through "
            f"POST /v1/vote, {meetings} clients at once; then {sheets} sheets through a bare "
            "endpoint (one INSERT each) on the same app"
        )
        queue = stack.task_queue("kaohe")
        campaign = f"vote-{stack.run_id}"
        issuer = DevIssuer.generate()
        verifier = issuer.verifier()
        # kaohe's API runs apart from the worker, with a pool of its own (db_pool_max).
        api_pool = await create_pool(
            stack.database_url, stack.settings.db_pool_min, stack.settings.db_pool_max
        )
        app = create_app(Api(stack.client, api_pool, verifier, BENCH_KEY))

        @app.post("/bench/bare", include_in_schema=False)
        async def bare(request: Request) -> dict[str, str]:
            body = json.loads(await request.body())
            async with api_pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO bench_bare_sheets (sheet) VALUES ($1::jsonb)",
                    json.dumps(body["sheet"], ensure_ascii=False),
                )
            return {"state": "stored"}

        async with stack.pool.acquire() as conn:
            await conn.execute(BARE_TABLE)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
        )
        serving = asyncio.create_task(server.serve())
        base = f"http://127.0.0.1:{port}"
        try:
            async with stack.kaohe_worker(queue):
                for _ in range(1000):  # up within 20 s
                    if server.started or serving.done():
                        break
                    await asyncio.sleep(0.02)
                ready = await _meetings(stack, queue, campaign, meetings, raters, cadres)
                sides = await _alternating(stack, base, [reqs for _, reqs in ready], rounds)
                # Every rater group's tokens are spent: every sheet counts, at once.
                for unit, _ in ready:
                    handle = stack.client.get_workflow_handle_for(
                        UnitAssessment.run, f"kaohe-{campaign}-{unit.unit_id}"
                    )
                    status = await wait_for_status(
                        handle, lambda s: s.evaluation.sheets == raters, 60.0
                    )
                    if status.evaluation.sheets != raters:
                        raise RuntimeError(
                            f"{unit.unit_id} counts {status.evaluation.sheets} of {raters}"
                        )
            report.console.print(report.log_summary(stack))
        finally:
            server.should_exit = True
            await serving
            await api_pool.close()
        vote_rate, bare_rate = sheets / sides.vote_wall, sheets / sides.bare_wall
        rows = [
            ("meetings x raters", f"{meetings} x {raters} = {sheets} sheets"),
            ("clients at once", str(meetings)),
            ("vote: wall time", f"{sides.vote_wall:.1f} s (goal: within {GOAL_SECONDS:.0f} s)"),
            ("vote: accept p50 / p99", _two(sides.vote_latency)),
            ("vote: sheets/s", f"{vote_rate:.1f}"),
            *sides.cpu_rows("vote", sides.vote_wall),
            ("bare INSERT: wall time", f"{sides.bare_wall:.1f} s"),
            ("bare INSERT: p50 / p99", _two(sides.bare_latency)),
            ("bare INSERT: sheets/s", f"{bare_rate:.1f}"),
            *sides.cpu_rows("bare", sides.bare_wall),
        ]
        report.console.print(report.figures_table("sheets through POST /v1/vote", rows))
    print(f"vote accept p50 = {report.ms(measure.percentile(sides.vote_latency, 50))}")
    print(f"vote accept p99 = {report.ms(measure.percentile(sides.vote_latency, 99))}")
    print(f"vote wall time = {sides.vote_wall:.1f} s (goal <= {GOAL_SECONDS:.0f} s)")
    report.print_ratio_line("vote sheets/s / bare sheets/s", measure.ratio(vote_rate, bare_rate))
    return 0


def _two(samples: list[float]) -> str:
    return " / ".join(report.ms(measure.percentile(samples, p)) for p in (50, 99))
