"""The hub's REST API: ``create_app(ctx, services)`` returns a FastAPI app.

See :mod:`hub.api.app` for the layout, :mod:`hub.api.deps` for authentication and
:mod:`hub.api.errors` for the problem+json error bodies.
"""

from hub.api.app import create_app
from hub.api.services import HubServices

__all__ = ["HubServices", "create_app"]
