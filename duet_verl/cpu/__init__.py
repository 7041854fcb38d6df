"""CPU backend pieces: tiny local assets, a streaming Hugging Face engine and a verl-compatible server."""
