"""How torchqueue is operated: the command line, the local supervisor, deployment files."""
