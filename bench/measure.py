"""The clients: curl for HTTP (its own timings, keep-alive across repeats), storescu for C-STORE, wrk for a
viewer's parallel requests, and a sampler of the server's resident memory. No Python HTTP client sits in a
timed path, except Orthanc's REST upload in the bulk import, which is how the issue measured it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from bench.servers import BenchError, Server, wait_until

CURL_FORMAT = "%{http_code} %{size_download} %{time_total}\\n"
STUDY_INSTANCE_COUNT = "00201208"


@dataclass(frozen=True)
class Sample:
    status: int
    size: int
    seconds: float


def curl(
    urls: list[str],
    headers: dict[str, str],
    data: Path | None = None,
    ca_file: Path | None = None,
    *,
    output: Path | None = None,
    statuses: frozenset[int] = frozenset({200}),
) -> list[Sample]:
    """One curl process fetching each URL in turn on one kept-alive connection; curl's own timings.

    The bodies go to `output` (the last one stays there) or nowhere; a status outside `statuses` fails.
    """
    command = ["curl", "--silent", "--show-error", "--write-out", CURL_FORMAT]
    if ca_file is not None:
        command += ["--cacert", str(ca_file)]
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    if data is not None:
        command += ["--data-binary", f"@{data}"]
    for url in urls:
        command += ["--output", str(output or "/dev/null"), url]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"curl failed ({done.returncode}): {done.stderr.strip()}")
    samples = []
    for line in done.stdout.split("\n"):
        if line.strip():
            status, size, seconds = line.split()
            samples.append(Sample(int(status), int(size), float(seconds)))
    bad = [s.status for s in samples if s.status not in statuses]
    if bad or len(samples) != len(urls):
        raise BenchError(f"HTTP status {bad or 'missing'} from {urls[0]}")
    return samples


class StorageScp(Protocol):
    """What storescu is pointed at: an archive, or the receiver of bench/receiver_floor.py."""

    name: str
    ae_title: str
    dimse_port: int


def storescu_command(server: StorageScp, folder: Path) -> list[str]:
    """Send every file under `folder` over one association, as a modality would."""
    return ["storescu", "--aetitle", "BENCH", "--call", server.ae_title, "--scan-directories", "--recurse",
            "127.0.0.1", str(server.dimse_port), str(folder)]


def storescu(server: StorageScp, *folders: Path) -> None:
    """One storescu process, one association, per folder, all at once."""
    senders = [
        subprocess.Popen(storescu_command(server, folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for folder in folders
    ]
    for sender in senders:
        _, errors = sender.communicate()
        if sender.returncode != 0:
            raise BenchError(f"storescu to {server.name} failed ({sender.returncode}): {errors.decode()[-500:]}")


def study_instance_count(server: Server, study_uid: str) -> int:
    """Number of Study Related Instances as QIDO reports it, 0 while the study is not found."""
    response = httpx.get(
        f"{server.dicomweb}/studies",
        params={"StudyInstanceUID": study_uid, "includefield": STUDY_INSTANCE_COUNT},
        headers={"Accept": "application/dicom+json"},
        timeout=60,
        verify=server.verify,
    )
    if response.status_code == 204 or not response.content or response.json() == []:
        return 0
    if response.status_code != 200:
        raise BenchError(f"QIDO on {server.name}: {response.status_code} {response.text[:200]}")
    return int(response.json()[0][STUDY_INSTANCE_COUNT]["Value"][0])


def wait_queryable(server: Server, study_uid: str, count: int, timeout: float = 1800) -> None:
    wait_until(lambda: study_instance_count(server, study_uid) >= count, timeout,
               f"{count} instances of study {study_uid} queryable on {server.name}", interval=0.02)


def timed_ingest(server: Server, folders: list[Path], study_uid: str, count: int) -> float:
    """Seconds from the first storescu byte (one association per folder) until QIDO counts every instance."""
    start = time.perf_counter()
    storescu(server, *folders)
    wait_queryable(server, study_uid, count)
    return time.perf_counter() - start


def parallel_posts(url: str, bodies: list[Path], headers: dict[str, str], ca_file: Path | None) -> float:
    """Seconds from starting one curl per body, all at once, until the last has its answer."""
    start = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        list(pool.map(lambda body: curl([url], headers, data=body, ca_file=ca_file), bodies))
    return time.perf_counter() - start


# wrk's script: each thread cycles through the paths; at the end, one JSON line with the rate and the latency
# at percentiles 1 to 99 (microseconds), and the failures, which fail the run.
WRK_SCRIPT = """
local paths = {{{paths}}}
local next_path = 0
{headers}
request = function()
    next_path = next_path % #paths + 1
    return wrk.format("GET", paths[next_path])
end
done = function(summary, latency, requests)
    local percentiles = {{}}
    for p = 1, 99 do percentiles[p] = latency:percentile(p) end
    local e = summary.errors
    io.write(string.format('{{"requests": %d, "duration_us": %d, "failures": %d, "latency_us": [%s]}}\\n',
        summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
        table.concat(percentiles, ",")))
end
"""


@dataclass(frozen=True)
class Load:
    rate: float  # requests answered per second
    latencies: list[float]  # seconds, at percentiles 1 to 99


def wrk_load(base_url: str, paths: list[str], headers: dict[str, str], connections: int, seconds: float,
             scratch: Path) -> Load:
    """`connections` kept-alive connections requesting `paths` in turn for `seconds` (two wrk threads)."""
    script = scratch / "wrk.lua"
    script.write_text(WRK_SCRIPT.format(
        paths=", ".join(json.dumps(path) for path in paths),
        headers="\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()),
    ))  # fmt: skip
    command = ["wrk", "--threads", str(min(2, connections, os.cpu_count() or 1)), "--connections", str(connections),
               "--duration", f"{max(1, round(seconds))}s", "--timeout", "30s", "--script", str(script), base_url]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise BenchError(f"wrk is missing ({exc}): install Debian's wrk (./dev does)") from exc
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    report = json.loads(lines[-1])
    if report["failures"] or not report["requests"]:
        raise BenchError(f"wrk against {base_url}: {report['failures']} of {report['requests']} requests failed")
    return Load(report["requests"] / (report["duration_us"] / 1e6), [us / 1e6 for us in report["latency_us"]])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def process_rss(server: Server) -> dict[int, int]:
    """The VmRSS of each of the server's processes (`up`'s each, or each wado-server of a stack) by pid; one that
    ended since it was listed is left out."""
    sizes = {}
    for pid in server.memory_pids():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            sizes[pid] = rss_bytes(pid)
    return sizes


def server_rss(server: Server) -> int:
    """The largest VmRSS among the server's processes."""
    return max(process_rss(server).values(), default=0)


@dataclass(frozen=True)
class Streamed:
    sample: Sample
    rss_before: int
    rss_peak: int
    rss_samples: int


def stream_with_rss(server: Server, url: str, headers: dict[str, str], interval: float = 0.02) -> Streamed:
    """Fetch `url` with curl while sampling the server's VmRSS every `interval` seconds."""
    before = server_rss(server)
    peak, taken = before, 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, taken
        while not done.is_set():
            peak = max(peak, server_rss(server))
            taken += 1
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        (result,) = curl([url], headers, ca_file=server.ca_file)
    finally:
        done.set()
        sampler.join()
    return Streamed(result, before, peak, taken)


@dataclass(frozen=True)
class WhileWriting:
    request_seconds: list[float]  # each metadata request answered while storescu was sending
    last_listed: int  # instances the last of them listed
    last_size: int
    complete_after: float  # from storescu's end until the metadata listed every instance


def metadata_while_writing(
    server: Server, folder: Path, path: str, count: int, headers: dict[str, str]
) -> WhileWriting:
    """Send `folder` with storescu while requesting the metadata at `path` back to back, then until it lists
    `count` instances. A series not there yet answers 404 (or an empty 200); those requests are not counted."""
    url = f"{server.dicomweb}{path}"
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        body = Path(scratch) / "metadata.json"

        def fetch() -> tuple[Sample, int]:
            (sample,) = curl([url], headers, ca_file=server.ca_file, output=body, statuses=frozenset({200, 204, 404}))
            listed = len(json.loads(body.read_bytes() or b"[]")) if sample.status == 200 else 0
            return sample, listed

        sender = subprocess.Popen(storescu_command(server, folder), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sample, listed = fetch()
        while sender.poll() is None:
            sample, listed = fetch()
            if listed:
                seconds.append(sample.seconds)
        _, errors = sender.communicate()
        if sender.returncode != 0:
            raise BenchError(f"storescu to {server.name} failed ({sender.returncode}): {errors.decode()[-500:]}")
        finished, last_listed = time.perf_counter(), listed
        while listed < count:
            if time.perf_counter() - finished > 600:
                raise BenchError(f"{server.name}: the metadata lists {listed} of {count} instances after 600 s")
            sample, listed = fetch()
        return WhileWriting(seconds or [sample.seconds], last_listed, sample.size, time.perf_counter() - finished)
