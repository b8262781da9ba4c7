"""The durable video job queue: its SQLite store, the dispatcher that hands jobs to the video
worker, and the service that runs both beside the router."""
