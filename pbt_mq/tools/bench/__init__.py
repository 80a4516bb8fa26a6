"""``pbt bench``: the data plane, the control plane and the fleet, measured."""
