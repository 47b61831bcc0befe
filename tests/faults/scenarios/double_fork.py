"""Leaves a double-forked, setsid grandchild behind (its pid in $FAULT_DIR/grandchild), then reports."""
import os
import time

import bnmatrix_scenario as bns
import ok


def train(tf, cfg, scratch):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(os.path.join(os.environ["FAULT_DIR"], "grandchild"), "w") as handle:
                handle.write(str(os.getpid()))
            time.sleep(3600)
        os._exit(0)
    deadline = time.time() + 10
    while not os.path.exists(os.path.join(os.environ["FAULT_DIR"], "grandchild")) and time.time() < deadline:
        time.sleep(0.05)
    return ok.train(tf, cfg, scratch)


if __name__ == "__main__":
    bns.main("double_fork", train)
