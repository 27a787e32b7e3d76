"""DICOMweb and the admin HTTP API: routes, negotiation, multipart, authentication, the access log.

Thin translations over the archive (archive/core.py).
"""
