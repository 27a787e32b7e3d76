"""The run folder: what the processes of one service share besides the index, the bus and the storage.

A service that runs as several processes (`http.workers` or `dimse.workers` > 1, service_workers.py) makes,
before anything else, a new folder in the system's temporary folder, named in the environment its spawned
processes inherit:
- `metrics/`: prometheus_client's multiprocess files, one per process and metric type, which `/metrics`
  sums (ops.py), so it counts what every process answered whichever process is asked;
- `connections`: the open connections per client address of every HTTP process (web/connection_counts.py).
The folder is new for each start (two archives, or two services of one archive, never share one) and is
removed when the service's process exits; one killed with -9 leaves it in the temporary folder.

A service of one process makes no folder: its metrics live in prometheus_client's default registry and
its connections in a Counter, as they always did.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from prometheus_client import values

from dicomcloud.web.connection_counts import create_table

RUN_FOLDER = "DICOMCLOUD_RUN_FOLDER"
# prometheus_client's own variable: the folder of its multiprocess files.
METRICS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
CONNECTIONS = "connections"


def share_between_processes(processes: int) -> Path | None:
    """The run folder of a service of `processes` processes, made and named in the environment (None: one
    process, nothing to share). Call before the service imports dicomcloud.metrics: this process's metric
    values must live in the folder from the first."""
    if processes < 2:
        return None
    if "dicomcloud.metrics" in sys.modules:
        raise RuntimeError("the run folder comes after metric values were made in this process only")
    folder = Path(tempfile.mkdtemp(prefix="dicomcloud-run-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "metrics").mkdir()
    create_table(folder / CONNECTIONS, processes)
    os.environ[RUN_FOLDER] = str(folder)
    os.environ[METRICS_FOLDER] = str(folder / "metrics")
    # prometheus_client chooses the class of every value it makes (`values.ValueClass`) from the environment
    # once, when first imported: in a spawned worker, which inherits the variable, that is right whatever
    # it imports first; this process imported it before the folder existed, so it is told here.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return folder


def run_folder() -> Path | None:
    """The run folder of this process's service, if it has one."""
    folder = os.environ.get(RUN_FOLDER)
    return Path(folder) if folder else None
