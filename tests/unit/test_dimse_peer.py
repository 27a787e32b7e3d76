"""The storage SCP `dicomcloud import --from-dimse --move-port` runs, driven by pynetdicom as the PACS
sending C-MOVE sub-operations: the instance a fetch waits for goes to its file, any other is refused."""

from __future__ import annotations

import io

import pydicom
import support
from pynetdicom import AE

from dicomcloud.adapters.dimse_peer import MoveReceiver

AE_TITLE = "DICOMCLOUD"
STUDY, SERIES = "1.2.826.0.8.1", "1.2.826.0.8.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_the_move_receiver_writes_the_instance_asked_for_and_refuses_any_other() -> None:
    receiver = MoveReceiver(AE_TITLE, ("127.0.0.1", 0), timeout=30)
    wanted, unasked = support.ct_dataset(STUDY, SERIES, SERIES + ".1"), support.ct_dataset(STUDY, SERIES, SERIES + ".2")
    pacs = AE(ae_title="PACS")
    pacs.add_requested_context(CT_IMAGE_STORAGE, EXPLICIT_LE)
    into = io.BytesIO()
    try:
        assoc = pacs.associate("127.0.0.1", receiver._server.server_address[1], ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            with receiver.expecting(wanted.SOPInstanceUID, into) as received:
                stored = assoc.send_c_store(wanted)
            refused = assoc.send_c_store(unasked)
        finally:
            assoc.release()
    finally:
        receiver.close()
    assert (int(stored.Status), received) == (0x0000, [1])
    assert int(refused.Status) == 0x0124
    assert refused.ErrorComment == f"this import did not ask for {unasked.SOPInstanceUID}"
    copy = pydicom.dcmread(io.BytesIO(into.getvalue()))
    assert copy.SOPInstanceUID == wanted.SOPInstanceUID and copy.file_meta.TransferSyntaxUID == EXPLICIT_LE
