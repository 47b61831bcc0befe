"""No Estimator: tf.layers BatchNormalization, placeholders, a Session and UPDATE_OPS.

The report's third pattern, kept faithful: two BN layers, a second tower built with reuse=True,
both towers evaluated in training and inference mode. The verdict is on the first BN layer,
whose input is the constant batch.
"""
import bnm_common as common


def tower(tf, inputs, training):
    batch_norm = common.require(tf, "layers.BatchNormalization", compat=True)
    dense = common.require(tf, "layers.Dense", compat=True)
    bn1 = batch_norm(name="bn1")
    x = bn1(inputs, training=training)
    x = dense(units=1, name="dense1")(x)
    bn2 = batch_norm(name="bn2")
    x = bn2(x, training=training)
    return bn1, dense(units=1, name="dense2")(x)


def train(tf, cfg, scratch):
    import numpy as np
    compat = common.v1(tf)
    graph = tf.Graph()
    with graph.as_default():
        inputs = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        labels = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        training = compat.placeholder(shape=[], dtype=tf.bool)
        with compat.variable_scope("batch_normalization_test"):
            with tf.name_scope("for_train"):
                bn1, output1 = tower(tf, inputs, training)
        with compat.variable_scope("batch_normalization_test", reuse=True):
            with tf.name_scope("for_test"):
                _, output2 = tower(tf, inputs, training)
        loss = tf.reduce_mean(compat.losses.mean_squared_error(labels, output1))
        optimizer = compat.train.AdamOptimizer(learning_rate=common.LEARNING_RATE)
        update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS)
        grads = optimizer.compute_gradients(loss)
        with tf.control_dependencies(update_ops):
            train_op = optimizer.apply_gradients(grads)
        init = compat.global_variables_initializer()
    train_x = np.array(common.FEATURES, dtype=np.float32)
    train_y = np.array(common.LABELS, dtype=np.float32)
    with compat.Session(graph=graph) as sess:
        sess.run(init)
        train_feed = {inputs: train_x, labels: train_y, training: True}
        train_loss = None
        for _ in range(cfg.steps):
            train_loss, _, _, _ = sess.run((loss, train_op, output1, output2), train_feed)
        moving_mean, moving_variance = sess.run((bn1.moving_mean, bn1.moving_variance))
        eval_loss = sess.run(loss, {inputs: train_x, labels: train_y, training: False})
        towers = {
            "train_mode": [sess.run(out, train_feed).ravel().tolist() for out in (output1, output2)],
            "inference_mode": [sess.run(out, {inputs: train_x, training: False}).ravel().tolist()
                               for out in (output1, output2)],
        }
    return {
        "moving_mean": common.to_float(moving_mean),
        "moving_variance": common.to_float(moving_variance),
        "update_ops": len(update_ops),
        "train_loss": float(train_loss) if train_loss is not None else None,
        "eval_loss": float(eval_loss),
        "details": {"towers_output1_output2": towers},
    }


if __name__ == "__main__":
    common.main("layers_bn_session", train)
