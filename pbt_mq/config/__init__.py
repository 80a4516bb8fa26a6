"""The experiment file: TOML parsed into a frozen, validated ``Experiment``."""
