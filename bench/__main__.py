"""`python -m bench <name> [options]`: run one benchmark on a private stack in a temp dir."""

from __future__ import annotations

import argparse
import asyncio
import importlib
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

    ballots = sub.add_parser("ballots", help="bulk import vs raw COPY, the median of three runs")
    ballots.add_argument("--n", type=_positive, default=100_000, help="ballots per path")
    ballots.add_argument("--cadres", type=_positive, default=4, help="cadres per unit")
    ballots.add_argument("--runs", type=_positive, default=3, help="runs, each on a fresh unit")

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

    api = sub.add_parser("api", help="an action through kaohe's API vs straight to Temporal")
    api.add_argument("--updates", type=_positive, default=300, help="actions of each")
    api.add_argument("--warmup", type=_non_negative, default=20, help="untimed of each first")

    vote = sub.add_parser(
        "vote", help="raters through the voting page's POST /v1/vote vs a bare INSERT endpoint"
    )
    vote.add_argument("--meetings", type=_positive, default=20, help="units, one client each")
    vote.add_argument("--raters", type=_positive, default=100, help="raters per meeting")
    vote.add_argument("--cadres", type=_positive, default=5, help="cadres per meeting")
    vote.add_argument("--rounds", type=_positive, default=10, help="vote/bare slices, alternated")

    for each in (floor, unit, ballots, chaos, campaign, latency, idle, api, vote):
        each.add_argument(
            "--keep", action="store_true", help="keep the temp dir (data and logs) afterwards"
        )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Each benchmark is bench/<name>.py, whose main() takes the options by their names.
    bench = importlib.import_module(f"bench.{args.name}")
    options = {k: v for k, v in vars(args).items() if k != "name"}
    return asyncio.run(bench.main(**options))


if __name__ == "__main__":
    sys.exit(main())
