"""An experiment's state in Redis as every process reads and changes it: launch, status, stop, members
ending, bad checkpoints, the lineage log and its replay."""
