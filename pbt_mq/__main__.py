"""``python -m pbt_mq [worker|arbiter] ...`` runs the same entry points without PATH."""

import sys

from pbt_mq.cli.pbt import arbiter_main, main, worker_main

if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    if role == "arbiter":
        sys.exit(arbiter_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
