"""The chaos runs' results, shared by the tests and the summary hook (one module instance)."""

RESULTS: list[dict] = []
