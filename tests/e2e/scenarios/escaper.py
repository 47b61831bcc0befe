"""Leaves a child in a session of its own (out of `timeout`'s process group) that holds the scenario's output
open, then reports real statistics: the scenario is done, its output stream is not."""
import subprocess

import bnmatrix_scenario as bns


def train(tf, cfg, scratch):
    subprocess.Popen(["sleep", "3600"], start_new_session=True)
    values = bns.feature_values()
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    decay = bns.MOMENTUM ** cfg.steps
    return bns.observations({"bn": bns.layer(mean * (1 - decay), variance + (1 - variance) * decay, values=values)})


if __name__ == "__main__":
    bns.main("escaper", train)
