"""DIMSE service handlers: one module per DICOM service, each a pynetdicom event handler."""
