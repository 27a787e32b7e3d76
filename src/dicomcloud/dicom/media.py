"""DICOM media (PS3.10): a file set's DICOMDIR names the files it holds by their File IDs, relative to its
own folder. `dicomcloud import` reads it so that the DICOMDIR, which is no instance, is not stored as one
and the files it names are."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicomcloud.errors import InvalidInput

# The name PS3.10 gives the directory file of every file set, and its SOP Class.
DICOMDIR = "DICOMDIR"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def referenced_files(dicomdir: Path) -> list[Path]:
    """The files the DICOMDIR's directory records name, in its order; InvalidInput when it is not one."""
    try:
        directory = pydicom.dcmread(dicomdir)
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise InvalidInput(f"{dicomdir} is not a readable DICOMDIR: {exc}") from exc
    if directory.file_meta.get("MediaStorageSOPClassUID") != MEDIA_STORAGE_DIRECTORY:
        raise InvalidInput(f"{dicomdir} is not a DICOMDIR: its SOP Class is not Media Storage Directory")
    files = []
    for record in directory.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if file_id:
            components = [file_id] if isinstance(file_id, str) else list(file_id)
            files.append(dicomdir.parent.joinpath(*components))
    return files
