"""``pbt study``: does PBT work here? Real experiments, compared and reported."""
