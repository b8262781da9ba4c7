"""POST /v1/images/generations, served by diffusers image workers."""
