"""tf.contrib.layers.batch_norm with its default updates_collections (UPDATE_OPS) and a train op
that does not depend on that collection: the most common TF 1 report. Training runs without error,
the update ops never run, and the statistics stay at 0 and 1. Unsupported in TF 2 (no tf.contrib).
"""
import bnmatrix_scenario as common
import contrib_batch_norm_updates_none as contrib


def train(tf, cfg, scratch):
    return contrib.train(tf, cfg, scratch, updates_collections="UPDATE_OPS", depend_on_update_ops=False)


if __name__ == "__main__":
    common.main("contrib_batch_norm_no_dependency", train)
