"""The web console: queues, workers, methods, calls and dead letters, in one page.

``micromessaging console --broker URL`` serves it on 127.0.0.1; the gateway mounts the same
app at ``/console`` behind a console token. `Console` is the ASGI app (app.py), fed by one
shared status snapshot (feed.py), the services' own descriptions (services.py) and signed
sessions with a CSRF token (session.py). The page is plain HTML, CSS and JavaScript under
``static/``, shipped in the wheel: no build step, nothing from a CDN. docs/console.md is its
manual.
"""

from .app import Console, ConsoleSettings

__all__ = ["Console", "ConsoleSettings"]
