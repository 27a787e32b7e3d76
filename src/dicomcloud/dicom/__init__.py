"""The DICOM domain: pure knowledge of DICOM, importing no adapter and no service."""
