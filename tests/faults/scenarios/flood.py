"""Prints 50 MB before its result."""
import sys

import bnmatrix_scenario as bns
import ok


def train(tf, cfg, scratch):
    line = "x" * 1023 + "\n"
    for _ in range(50 * 1024):
        sys.stdout.write(line)
    return ok.train(tf, cfg, scratch)


if __name__ == "__main__":
    bns.main("flood", train)
