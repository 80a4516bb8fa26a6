"""``pbt-worker``: takes segment jobs, trains them with the user's trainable, publishes ready events."""
