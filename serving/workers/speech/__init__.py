"""The speech worker: text-to-speech engines behind /v1/audio/speech."""
