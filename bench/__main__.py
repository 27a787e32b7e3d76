"""`python -m bench [--quick] [--stack | --s3 | --scale] [--out DIR]`: run the side-by-side benchmark, print the
table, write JSON."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench.report import table
from bench.run import Bench
from bench.scale import BACKENDS, QUICK_SCALE, SCALE, ScaleBench
from bench.servers import BenchError
from bench.workload import FULL, QUICK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every operation (CI smoke run)")
    parser.add_argument(
        "--stack", action="store_true", help="bench the distributed stack (dicomcloud stack up) instead of `up`"
    )
    parser.add_argument(
        "--s3", action="store_true",
        help="`dicomcloud up` on S3 (a SeaweedFS started for the run) against the same on the local filesystem",
    )  # fmt: skip
    parser.add_argument(
        "--scale", action="store_true",
        help="the index at a million instances (SQLite and PostgreSQL): ingest rate and QIDO against Orthanc's",
    )  # fmt: skip
    parser.add_argument("--scale-instances", type=int, help=f"instances --scale loads (default: {SCALE.instances:,})")
    parser.add_argument(
        "--scale-index", choices=BACKENDS, action="append", help="an index --scale measures (default: both)"
    )
    parser.add_argument(
        "--scale-minutes", type=float, help="stop each index's load after this long and measure at the size reached"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/out"),
        help="where results.json and results.txt go (scale.json and scale.txt with --scale)",
    )  # fmt: skip
    parser.add_argument("--work", type=Path, help="folder for generated files and server data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--only", help="comma-separated operation names to measure (default: every operation)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    # SIGTERM unwinds like Ctrl-C, so both archives are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    work = args.work or Path(tempfile.mkdtemp(prefix="dicomcloud-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # Synthetic data only: open to others, so the stack's PostgreSQL (run as `postgres` under root) reaches its folder.
    work.chmod(0o755)
    only = {name.strip() for name in args.only.split(",") if name.strip()} if args.only else None
    try:
        if args.scale:
            scale_bench = scale(args, work)
            result, name, mode = scale_bench.run(), "scale", "scale quick" if args.quick else "scale"
            text = scale_table(scale_bench)
        else:
            sizes = QUICK if args.quick else FULL
            if args.s3:  # no QIDO at scale in this comparison: no index studies to load twice
                sizes = dataclasses.replace(sizes, index_studies=0)
            bench = Bench(sizes, work, stack=args.stack, s3=args.s3, only=only)
            result, name = bench.run(), "results"
            mode = ("quick" if args.quick else "full") + (" s3" if args.s3 else "")
            text = table(list(bench.ops.values()), bench.results_count)
    except BenchError as exc:
        logging.getLogger("bench").error("%s (work folder kept: %s)", exc, work)
        return 1
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    result["conditions"]["mode"] = mode
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{name}.txt").write_text(text + "\n")
    print(text)
    return 0


def scale(args: argparse.Namespace, work: Path) -> ScaleBench:
    sizes = QUICK_SCALE if args.quick else SCALE
    if args.scale_instances:
        sizes = dataclasses.replace(sizes, instances=args.scale_instances)
    orthanc_studies = (QUICK if args.quick else FULL).index_studies
    budget = args.scale_minutes * 60 if args.scale_minutes else None
    return ScaleBench(sizes, orthanc_studies, work, args.scale_index or BACKENDS, budget)


def scale_table(bench: ScaleBench) -> str:
    lines = [table(list(bench.ops.values()), {})]
    lines += [f"{name}: {bench.loaded[name]:,} instances loaded in {seconds:.0f}s" for name, seconds in
              bench.load_seconds.items()]  # fmt: skip
    lines += [f"{name}: results {counts}" for name, counts in bench.result_counts.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
