"""The arbiter (``pbt-arbiter``): decides ready events, queues next segments, and keeps the fleet
healthy (reaper, checkpoint GC, stream trimming)."""
