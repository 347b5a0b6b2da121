"""What the API and the workers agree on. Never imports torch, api or workers."""
