"""``pbt dashboard``: the population in a browser, live and read-only, from Redis alone.

``data`` and ``follow`` read Redis (incrementally, cached per experiment, with the work per
refresh bounded) and need nothing beyond the core package; ``auth`` is the token rule, a
plain ASGI middleware; ``api`` and ``app`` are the Starlette routes and ``serve`` the uvicorn
adapter: those three import the optional ``dashboard`` extra, and only ``pbt dashboard``
imports them. ``static/`` is the page (plain HTML, JS and CSS) and the vendored Chart.js.
"""
