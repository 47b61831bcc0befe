"""tf.layers BatchNormalization (tf.compat.v1.layers in 2.x) on the batch as a 4-D input
(N, 1, 1, 1) with the layer's default settings, in a Session with UPDATE_OPS: which batch
variance does the moving variance follow?"""
import bnmatrix_scenario as common


def train(tf, cfg, scratch, batch_norm_options=None):
    import numpy as np
    compat = common.v1(tf)
    batch_norm = common.require(tf, "layers.BatchNormalization", compat=True)
    graph = tf.Graph()
    with graph.as_default():
        inputs = compat.placeholder(shape=[None, 1, 1, 1], dtype=tf.float32)
        labels = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        try:
            bn = batch_norm(**(batch_norm_options or {}))
        except (TypeError, ValueError) as exc:
            raise common.Unsupported("layers.BatchNormalization(fused=False)", str(exc))
        x = bn(inputs, training=True)
        output = compat.layers.dense(compat.layers.flatten(x), 1)
        loss = tf.reduce_mean(compat.losses.mean_squared_error(labels, output))
        update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            train_op = compat.train.AdamOptimizer(learning_rate=common.LEARNING_RATE).minimize(loss)
        init = compat.global_variables_initializer()
    feed = {inputs: np.array(common.FEATURES, dtype=np.float32).reshape((-1, 1, 1, 1)),
            labels: np.array(common.LABELS, dtype=np.float32)}
    with compat.Session(graph=graph) as sess:
        sess.run(init)
        train_loss = None
        for _ in range(cfg.steps):
            train_loss, _ = sess.run((loss, train_op), feed)
        moving_mean, moving_variance = sess.run((bn.moving_mean, bn.moving_variance))
    return common.observations({"bn": common.layer(moving_mean, moving_variance, common.feature_values())},
                               update_ops=len(update_ops), train_loss=float(train_loss),
                               extra={"fused": getattr(bn, "fused", None)})


if __name__ == "__main__":
    common.main("layers_bn_4d_variance", train)
