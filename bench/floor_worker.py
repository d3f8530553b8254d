"""`python -m bench.floor_worker ADDRESS TASK_QUEUE`: the floor's workflows in a worker
process of their own (for `bench idle`, which measures its memory), with the kaohe worker's
sandbox and workflow cache size."""

from __future__ import annotations

import asyncio
import sys

from temporalio.client import Client
from temporalio.worker import Worker

from bench.floor import EchoWorkflow, HelloWorkflow, hello
from kaohe.settings import Settings
from worker import sandbox_runner


async def main(address: str, task_queue: str) -> None:
    client = await Client.connect(address)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[HelloWorkflow, EchoWorkflow],
        activities=[hello],
        workflow_runner=sandbox_runner(),
        max_cached_workflows=Settings().worker_max_cached_workflows,
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
