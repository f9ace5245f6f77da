"""MIMIC: a DICOM archive reached over mutual TLS, storing to files or Azure."""

__version__ = "0.1.0"
