"""The ASGI middleware every request passes through, outermost first: request ids and the access
log, CORS, auth, metering, the body-size limit."""
