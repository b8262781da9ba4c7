"""The launcher: prepares models, supervises worker processes, serves the router."""
