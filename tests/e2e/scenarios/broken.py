"""A scenario that dies without a result: for the failure tests."""
import sys

import bnmatrix_scenario as bns


def train(tf, cfg, scratch):
    sys.stderr.write("broken on purpose\n")
    sys.exit(3)


if __name__ == "__main__":
    bns.main("broken", train)
