"""tf.contrib.layers.batch_norm(..., updates_collections=None) in a TF 1 Session loop: the layer
updates its moving statistics in place, as part of its own output, so the train op needs no
dependency on UPDATE_OPS. tf.contrib is gone from TF 2 (unsupported there).

contrib's default decay is 0.999; the scenario passes the 0.99 every other scenario uses.
"""
import bnmatrix_scenario as common


def train(tf, cfg, scratch, updates_collections=None, depend_on_update_ops=False):
    """The contrib layer on the constant batch, Adam on a Dense(1) head, `cfg.steps` Session steps.

    `updates_collections`: None (in place) or "UPDATE_OPS" (the default: the updates go to that collection);
    `depend_on_update_ops`: the train op under control_dependencies(UPDATE_OPS) or not."""
    import numpy as np
    batch_norm = common.require(tf, "contrib.layers.batch_norm")
    compat = common.v1(tf)
    graph = tf.Graph()
    with graph.as_default():
        inputs = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        labels = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        collections = compat.GraphKeys.UPDATE_OPS if updates_collections == "UPDATE_OPS" else None
        normalised = batch_norm(inputs, decay=common.MOMENTUM, is_training=True, updates_collections=collections,
                                scope="bn")
        outputs = compat.layers.dense(normalised, 1, name="dense")
        loss = tf.reduce_mean(compat.losses.mean_squared_error(labels, outputs))
        optimizer = compat.train.AdamOptimizer(learning_rate=common.LEARNING_RATE)
        update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS)
        if depend_on_update_ops:
            with tf.control_dependencies(update_ops):
                train_op = optimizer.minimize(loss)
        else:
            train_op = optimizer.minimize(loss)
        statistics = [v for v in compat.global_variables() if v.name.startswith("bn/moving_")]
        init = compat.global_variables_initializer()
    feed = {inputs: np.array(common.FEATURES, dtype=np.float32), labels: np.array(common.LABELS, dtype=np.float32)}
    with compat.Session(graph=graph) as sess:
        sess.run(init)
        train_loss = None
        for _ in range(cfg.steps):
            train_loss, _ = sess.run((loss, train_op), feed)
        values = dict((v.name.split("/")[1].split(":")[0], sess.run(v)) for v in statistics)
    return common.observations({"bn": common.layer(values["moving_mean"], values["moving_variance"],
                                                   common.feature_values())},
                               update_ops=len(update_ops), train_loss=float(train_loss),
                               extra={"updates_collections": updates_collections or "None",
                                      "train_op_depends_on_update_ops": depend_on_update_ops})


if __name__ == "__main__":
    common.main("contrib_batch_norm_updates_none", train)
