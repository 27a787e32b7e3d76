"""The DIMSE faces of the archive: pynetdicom handlers for C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE.

Thin translations over the archive (archive/core.py).
"""
