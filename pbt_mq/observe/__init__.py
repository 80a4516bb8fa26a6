"""Reading an experiment for people and tools: lineage views, stats, top, plots, export/replay,
Prometheus and TensorBoard hooks."""
