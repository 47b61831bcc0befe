"""Leaves a child that sheds bnmatrix's token (an empty environment) and its session, and keeps the scenario's
output open; its pid goes to $FAULT_DIR/escaped. Then reports `updated`."""
import os
import subprocess

import bnmatrix_scenario as bns
import ok


def train(tf, cfg, scratch):
    child = subprocess.Popen(["/bin/sleep", "3600"], env={}, start_new_session=True)
    with open(os.path.join(os.environ["FAULT_DIR"], "escaped"), "w") as handle:
        handle.write(str(child.pid))
    return ok.train(tf, cfg, scratch)


if __name__ == "__main__":
    bns.main("escape", train)
