"""A scenario that never finishes: for the timeout and Ctrl-C tests."""
import time

import bnmatrix_scenario as bns


def train(tf, cfg, scratch):
    time.sleep(3600)


if __name__ == "__main__":
    bns.main("sleeper", train)
