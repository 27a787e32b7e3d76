"""The archive's operations, protocol-neutral: store, search, retrieve, remove and the series metadata.

The web app (web/), the DIMSE SCP (dimse/) and the bus workers (workers/) are thin translations
over one `Archive` per process (archive/core.py).
"""
