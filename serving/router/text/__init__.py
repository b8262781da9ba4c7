"""Chat and legacy completions, proxied to vLLM workers."""
