"""Request shapes of every endpoint, side by side: chat and completions (checked by the router,
served by vLLM), and the media APIs (shared by the router and the media workers)."""
