"""The router: the public OpenAI-compatible HTTP API in front of the workers."""
