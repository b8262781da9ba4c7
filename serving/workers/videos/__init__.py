"""The video worker: a diffusers text-to-video pipeline (Wan) rendering jobs the router owns."""
