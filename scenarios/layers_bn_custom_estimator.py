"""tf.layers.BatchNormalization (tf.compat.v1.layers in 2.x) in a custom Estimator model_fn.

The report's first working pattern: tf.layers adds its update ops to UPDATE_OPS, so the train
op's control dependency runs them.
"""
import bnm_common as common


def train(tf, cfg, scratch):
    compat = common.v1(tf)
    estimator_module = common.estimator_api(tf)
    batch_norm = common.require(tf, "layers.BatchNormalization", compat=True)
    dense = common.require(tf, "keras.layers.Dense")

    def model_fn(features, labels, mode):
        training = (mode == estimator_module.ModeKeys.TRAIN)
        x = batch_norm()(features, training=training)
        y = dense(1)(x)
        predictions = {"prob": y}
        if mode == estimator_module.ModeKeys.PREDICT:
            return estimator_module.EstimatorSpec(mode=mode, predictions=predictions)
        loss = tf.reduce_mean(compat.losses.mean_squared_error(labels, y))
        if mode == estimator_module.ModeKeys.TRAIN:
            optimizer = compat.train.AdamOptimizer(learning_rate=common.LEARNING_RATE)
            update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS)
            with tf.control_dependencies(update_ops):
                train_op = optimizer.minimize(loss, global_step=compat.train.get_global_step())
            return estimator_module.EstimatorSpec(mode=estimator_module.ModeKeys.TRAIN, loss=loss,
                                                  train_op=train_op)
        return estimator_module.EstimatorSpec(mode=mode, loss=loss)

    estimator = estimator_module.Estimator(model_fn=model_fn, model_dir=scratch)
    return common.train_and_evaluate(tf, estimator, cfg.steps, lambda: common.constant_input_fn(tf))


if __name__ == "__main__":
    common.main("layers_bn_custom_estimator", train)
