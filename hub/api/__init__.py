"""The hub's REST API: :func:`hub.api.app.create_app` returns a FastAPI app over a context
and :class:`hub.api.services.HubServices`.

See :mod:`hub.api.app` for the layout, :mod:`hub.api.deps` for authentication and
:mod:`hub.api.errors` for the problem+json error bodies. This package imports nothing by
itself, so a command that needs only :mod:`hub.api.auth` (``hub token create``) does not
load the whole app.
"""
