"""Hangs on the TF version named by FAULT_HANG_TF (all versions when it is empty); `updated` elsewhere."""
import os
import time

import bnmatrix_scenario as bns
import ok


def train(tf, cfg, scratch):
    if os.environ.get("FAULT_HANG_TF", "") in ("", tf.__version__):
        time.sleep(3600)
    return ok.train(tf, cfg, scratch)


if __name__ == "__main__":
    bns.main("hang", train)
