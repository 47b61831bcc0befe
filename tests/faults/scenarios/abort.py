"""Crashes the interpreter (os.abort: SIGABRT, no result, no cleanup) after a line on each stream."""
import os
import sys

import bnmatrix_scenario as bns


def train(tf, cfg, scratch):
    sys.stdout.write("about to abort\n")
    sys.stderr.write("aborting now\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os.abort()


if __name__ == "__main__":
    bns.main("abort", train)
