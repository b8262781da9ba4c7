"""The asynchronous video API, with its jobs kept by the router."""
