"""The TF 1 functional form: tf.layers.batch_normalization(x, training=is_training) (tf.compat.v1
from 1.13) with a boolean placeholder fed True, the train op under
control_dependencies(UPDATE_OPS), in a Session loop: the documented way, which must update.
"""
import bnmatrix_scenario as common


def train(tf, cfg, scratch):
    import numpy as np
    batch_normalization = common.require(tf, "layers.batch_normalization", compat=True)
    dense = common.require(tf, "layers.dense", compat=True)
    compat = common.v1(tf)
    graph = tf.Graph()
    with graph.as_default():
        inputs = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        labels = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        is_training = compat.placeholder(shape=[], dtype=tf.bool)
        normalised = batch_normalization(inputs, momentum=common.MOMENTUM, training=is_training, name="bn")
        loss = tf.reduce_mean(compat.losses.mean_squared_error(labels, dense(normalised, 1, name="dense")))
        update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            train_op = compat.train.AdamOptimizer(learning_rate=common.LEARNING_RATE).minimize(loss)
        statistics = [v for v in compat.global_variables() if v.name.startswith("bn/moving_")]
        init = compat.global_variables_initializer()
    train_feed = {inputs: np.array(common.FEATURES, dtype=np.float32),
                  labels: np.array(common.LABELS, dtype=np.float32), is_training: True}
    eval_feed = dict(train_feed)
    eval_feed[is_training] = False
    with compat.Session(graph=graph) as sess:
        sess.run(init)
        train_loss = None
        for _ in range(cfg.steps):
            train_loss, _ = sess.run((loss, train_op), train_feed)
        values = dict((v.name.split("/")[1].split(":")[0], sess.run(v)) for v in statistics)
        eval_loss = sess.run(loss, eval_feed)
    return common.observations({"bn": common.layer(values["moving_mean"], values["moving_variance"],
                                                   common.feature_values())},
                               update_ops=len(update_ops), train_loss=float(train_loss), eval_loss=float(eval_loss))


if __name__ == "__main__":
    common.main("layers_batch_normalization_placeholder", train)
