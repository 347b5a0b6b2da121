"""The consumer side: Celery tasks, device pinning, training and inference with PyTorch."""
