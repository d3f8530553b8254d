"""`python -m bench <name> [options]`: run one benchmark on a private stack in a temp dir."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="name", required=True, metavar="<name>")

    floor = sub.add_parser(
        "floor", help="hello-world workflows/s, history events/s and update round trips"
    )
    floor.add_argument("--workflows", type=_positive, default=200, help="hello workflows")
    floor.add_argument("--updates", type=_positive, default=200, help="sequential updates")
    floor.add_argument("--concurrency", type=_positive, default=20, help="workflows in flight")
    floor.add_argument("--warmup", type=_non_negative, default=10, help="untimed of each first")

    unit = sub.add_parser("unit", help="UnitAssessment through all stages vs the floor")
    unit.add_argument("--units", type=_positive, default=20, help="unit workflows")
    unit.add_argument("--voters", type=_positive, default=12, help="voters per unit")
    unit.add_argument("--cadres", type=_positive, default=3, help="cadres per unit")
    unit.add_argument("--batch-size", type=_positive, default=500, help="ballots per update")
    unit.add_argument("--concurrency", type=_positive, default=10, help="units in flight")
    unit.add_argument("--warmup", type=_non_negative, default=1, help="untimed units first")
    unit.add_argument("--floor-workflows", type=_positive, default=200)
    unit.add_argument("--floor-updates", type=_positive, default=200)
    unit.add_argument("--floor-concurrency", type=_positive, default=20)
    unit.add_argument("--floor-warmup", type=_non_negative, default=10)

    ballots = sub.add_parser(
        "ballots", help="bulk import vs raw COPY, record_ballots updates vs bare updates"
    )
    ballots.add_argument("--n", type=_positive, default=100_000, help="ballots per path")
    ballots.add_argument("--cadres", type=_positive, default=4, help="cadres per unit")
    ballots.add_argument("--batch-size", type=_positive, default=500, help="ballots per update")

    chaos = sub.add_parser(
        "chaos", help="a campaign through worker kills and server crashes vs undisturbed"
    )
    chaos.add_argument("--units", type=_positive, default=200, help="units per campaign")
    chaos.add_argument("--kills", type=_positive, default=20, help="worker SIGKILLs")
    chaos.add_argument("--concurrency", type=_positive, default=20, help="units in flight")
    campaign = sub.add_parser(
        "campaign", help="a whole campaign with simulated integrators vs the floor's events/s"
    )
    campaign.add_argument("--units", type=_positive, default=1000, help="units in the campaign")
    campaign.add_argument("--concurrency", type=_positive, default=20, help="units driven at once")
    campaign.add_argument("--floor-workflows", type=_positive, default=200)
    campaign.add_argument("--floor-concurrency", type=_positive, default=20)
    campaign.add_argument("--floor-warmup", type=_non_negative, default=10)

    latency = sub.add_parser("latency", help="record_talk update round trips vs the floor's")
    latency.add_argument("--updates", type=_positive, default=300, help="updates of each")
    latency.add_argument("--warmup", type=_non_negative, default=20, help="untimed of each first")

    idle = sub.add_parser("idle", help="waiting unit workflows: worker memory, listing stalled")
    idle.add_argument("--units", type=_positive, default=10_000, help="workflows each side")
    idle.add_argument(
        "--stall-after", type=float, default=30.0, help="seconds until a notice deadline passes"
    )

    for each in (floor, unit, ballots, chaos, campaign, latency, idle):
        each.add_argument(
            "--keep", action="store_true", help="keep the temp dir (data and logs) afterwards"
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.name == "floor":
        from bench import floor

        return asyncio.run(
            floor.main(args.workflows, args.updates, args.concurrency, args.warmup, args.keep)
        )
    if args.name == "ballots":
        from bench import ballots

        return asyncio.run(
            ballots.main(n=args.n, cadres=args.cadres, batch_size=args.batch_size, keep=args.keep)
        )
    if args.name == "chaos":
        from bench import chaos as chaos_bench

        return asyncio.run(
            chaos_bench.main(
                units=args.units, kills=args.kills, concurrency=args.concurrency, keep=args.keep
            )
        )
    if args.name == "idle":
        from bench import idle as idle_bench

        return asyncio.run(
            idle_bench.main(units=args.units, stall_after=args.stall_after, keep=args.keep)
        )
    if args.name == "latency":
        from bench import latency as latency_bench

        return asyncio.run(
            latency_bench.main(updates=args.updates, warmup=args.warmup, keep=args.keep)
        )
    if args.name == "campaign":
        from bench import campaign as campaign_bench

        return asyncio.run(
            campaign_bench.main(
                units=args.units,
                concurrency=args.concurrency,
                floor_workflows=args.floor_workflows,
                floor_concurrency=args.floor_concurrency,
                floor_warmup=args.floor_warmup,
                keep=args.keep,
            )
        )
    from bench import unit

    return asyncio.run(
        unit.main(
            units=args.units,
            voters=args.voters,
            cadres=args.cadres,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            warmup=args.warmup,
            floor_workflows=args.floor_workflows,
            floor_updates=args.floor_updates,
            floor_concurrency=args.floor_concurrency,
            floor_warmup=args.floor_warmup,
            keep=args.keep,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
