"""The exploit and explore rules: pure functions of (leaderboard, member, seeded rng), behind a
Protocol and a registry that config validation, the arbiter and lineage replay share."""
