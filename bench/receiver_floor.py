"""The floor under the C-STORE targets: pynetdicom receiving the same instances and storing nothing.

The archive's SCP is pynetdicom (dimse/scp.py). This receiver is the same library in the same setup: every
storage context with the archive's transfer syntaxes, datasets written undecoded to a temporary file, the
service process's tuning, one listening socket accepted on by as many processes as the archive's DIMSE
workers (`SharedSocketServer`). Its handler answers success at once. storescu sends to it exactly as to the
archives, and its rate against Orthanc's in the same run is the most an archive built on pynetdicom reaches on
this machine, whatever it does with an instance once received.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
from multiprocessing.synchronize import Event
from types import TracebackType

from pynetdicom import AE, _config, evt

from dicomcloud.dimse.scp import TRANSFER_SYNTAXES, SharedSocketServer, storage_sop_classes
from dicomcloud.process import tune_service_process

AE_TITLE = "FLOOR"
STARTUP_TIMEOUT = 60.0


def _receive(listening: socket.socket, ready: Event, stop: Event) -> None:
    """One receiving process: serve `listening` until `stop`."""
    tune_service_process()
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=AE_TITLE)
    ae.maximum_associations = 64
    for sop_class in storage_sop_classes():
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    server = ae.make_server(
        listening.getsockname(),
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
        server_class=SharedSocketServer,
        listening=listening,
    )
    threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
    ready.set()
    stop.wait()  # the process ends here, and its serving thread with it


class ReceiverFloor:
    """`processes` receivers on one loopback port, for the bench's storescu (`name`, `ae_title`, `dimse_port`)."""

    name = "the pynetdicom floor"
    ae_title = AE_TITLE

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._listening = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.dimse_port = int(self._listening.getsockname()[1])
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._ready = [context.Event() for _ in range(processes)]
        self._receivers = [
            context.Process(target=_receive, args=(self._listening, ready, self._stop), name=f"floor-{number}")
            for number, ready in enumerate(self._ready, 1)
        ]

    def __enter__(self) -> ReceiverFloor:
        for receiver in self._receivers:
            receiver.start()
        for ready in self._ready:
            if not ready.wait(STARTUP_TIMEOUT):
                self.__exit__(None, None, None)
                raise RuntimeError(f"a pynetdicom floor receiver did not start within {STARTUP_TIMEOUT:.0f}s")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        for receiver in self._receivers:
            receiver.join(10)
            if receiver.is_alive():
                receiver.kill()
                receiver.join()
        self._listening.close()
