"""DICOMweb (PS3.18): QIDO-RS, WADO-RS and STOW-RS over the archive's one index, object store,
policy and audit trail, as a Starlette app mounted at ``/dicomweb`` by ``mimic web``."""
