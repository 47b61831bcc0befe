"""Reports the statistics of as many updates as the fake TF's BN_UPDATES says: `steps` is updated, 0 is
stale, another count is wrong, -1 is unsupported, -2 crashes. Bisect's tests give each fake release its
own count; FAULT_UPDATES="2.99.6=0" overrides a release's count (a behaviour that changes between runs)."""
import os
import time

import bnmatrix_scenario as bns
import ok


def train(tf, cfg, scratch):
    time.sleep(float(os.environ.get("FAULT_PROBE_SECONDS", "0")))
    updates = getattr(tf, "BN_UPDATES", cfg.steps)
    for item in os.environ.get("FAULT_UPDATES", "").split():
        version, _, count = item.partition("=")
        if version == tf.__version__:
            updates = int(count)
    if updates == -1:
        raise bns.Unsupported("tf.fake_batch_norm", "absent in this release")
    if updates == -2:
        raise RuntimeError("the fake release crashes")
    mean, variance = ok.closed_form(updates)
    return bns.observations({"bn": bns.layer(mean, variance, values=bns.feature_values())})


if __name__ == "__main__":
    bns.main("versioned", train)
