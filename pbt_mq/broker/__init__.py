"""Redis as the message broker: connecting (single node or Cluster), Lua scripts, and RQ segment jobs.
The adapters to redis-py and RQ internals live here and nowhere else."""
