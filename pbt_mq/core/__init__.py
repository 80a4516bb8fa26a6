"""The vocabulary every part shares: wire messages, Redis keys and records, hyperparameter spaces,
settings and hooks. Imports nothing else of pbt_mq."""
