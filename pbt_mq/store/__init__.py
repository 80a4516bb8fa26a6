"""Checkpoint stores (a directory, any S3 API) and the checkpoint format: immutable objects checked by sha256."""
