"""Encoding generated media (PyAV: FFmpeg in the wheel, no system ffmpeg needed)."""
