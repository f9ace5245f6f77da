"""The archive's protocol-neutral core: what DIMSE and DICOMweb both do to objects.

Both front doors (``dimse/`` and ``web/``) keep objects through one ingest path and read them
back through one verified read, so the invariants (durable before success, bytes as received,
SHA-256 checked before any byte leaves) cannot drift apart between them.
"""
