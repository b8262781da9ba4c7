"""The image worker: a diffusers text-to-image pipeline (FLUX) behind /v1/images/generations."""
