"""The worker client: how the router, the video dispatchers and the launcher reach workers.

- `worker.py`: a worker (one process or a pool of replicas) and which replica takes a request;
- `replica.py` and `transport.py`: one replica over HTTP, on aiohttp's connection pool;
- `errors.py`: a worker's failures as OpenAI errors;
- `served.py`: a configured model and its worker;
- `vllm_contract.py`: what the relays rely on in vLLM's OpenAI server.

It stands below the router: nothing here imports `serving.router`.
"""
