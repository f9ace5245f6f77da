"""The operator console of `mimic web`: pages for signed-in operators (OIDC with PKCE).

``build_console(ConsoleContext)`` gives the ASGI app the web composition root mounts at ``/``
(after ``/dicomweb``); ``auth.current_user`` is how the DICOMweb routes recognise a console
session, so that the pages' images come through the same door as any viewer's.
"""
