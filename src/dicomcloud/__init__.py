"""dicomcloud: a distributed, standards-conformant DICOMweb archive."""

__version__ = "0.1.0"
