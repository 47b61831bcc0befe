"""No Estimator: tf.layers BatchNormalization, placeholders, a Session and UPDATE_OPS.

The report's third pattern, kept faithful: two BN layers, a second tower built with reuse=True,
both towers evaluated in training and inference mode. The first BN layer, whose input is the
constant batch, is judged; the second is shown.
"""
import bnmatrix_scenario as common


def tower(tf, inputs, training):
    batch_norm = common.require(tf, "layers.BatchNormalization", compat=True)
    dense = common.require(tf, "layers.Dense", compat=True)
    bn1 = batch_norm(name="bn1")
    x = bn1(inputs, training=training)
    x = dense(units=1, name="dense1")(x)
    bn2 = batch_norm(name="bn2")
    x = bn2(x, training=training)
    return (bn1, bn2), dense(units=1, name="dense2")(x)


def train(tf, cfg, scratch, update_scope=None):
    """The report's code; `update_scope` filters UPDATE_OPS by name scope (None: the whole collection)."""
    import numpy as np
    compat = common.v1(tf)
    graph = tf.Graph()
    with graph.as_default():
        inputs = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        labels = compat.placeholder(shape=[None, 1], dtype=tf.float32)
        training = compat.placeholder(shape=[], dtype=tf.bool)
        with compat.variable_scope("batch_normalization_test"):
            with tf.name_scope("for_train"):
                (bn1, bn2), output1 = tower(tf, inputs, training)
        with compat.variable_scope("batch_normalization_test", reuse=True):
            with tf.name_scope("for_test"):
                _, output2 = tower(tf, inputs, training)
        loss = tf.reduce_mean(compat.losses.mean_squared_error(labels, output1))
        optimizer = compat.train.AdamOptimizer(learning_rate=common.LEARNING_RATE)
        update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS, scope=update_scope)
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
        statistics = sess.run([(bn.moving_mean, bn.moving_variance) for bn in (bn1, bn2)])
        eval_loss = sess.run(loss, {inputs: train_x, labels: train_y, training: False})
        towers = {
            "train_mode": [sess.run(out, train_feed).ravel().tolist() for out in (output1, output2)],
            "inference_mode": [sess.run(out, {inputs: train_x, training: False}).ravel().tolist()
                               for out in (output1, output2)],
        }
    # bn1 sees the constant batch; bn2's input changes as dense1 trains, so it is shown, not judged.
    return common.observations(
        {"bn1": common.layer(statistics[0][0], statistics[0][1], common.feature_values()),
         "bn2": common.layer(statistics[1][0], statistics[1][1])},
        update_ops=len(update_ops), train_loss=float(train_loss) if train_loss is not None else None,
        eval_loss=float(eval_loss), extra={"towers_output1_output2": towers})


if __name__ == "__main__":
    common.main("layers_bn_session", train)
