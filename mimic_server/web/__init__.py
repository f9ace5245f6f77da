"""The HTTP side of MIMIC (ASGI: Starlette on uvicorn): today the operations endpoints.

A sibling of ``net/``: it uses what the composition root hands it and never imports
``dimse``.
"""
