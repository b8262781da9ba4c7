"""The transcription worker: faster-whisper behind /v1/audio/transcriptions."""
