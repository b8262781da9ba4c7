"""Media workers: one process per model, each speaking HTTP on loopback to the router.

Chat workers are vLLM's own server; the workers here hold diffusers pipelines (and, later,
audio models). Engine code (loading, running a pipeline) is kept apart from the HTTP layer.
"""
