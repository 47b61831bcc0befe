"""tf.compat.v1.keras.layers.BatchNormalization in the custom model_fn of keras_bn_custom_estimator.

Does the TF1-compatibility Keras layer fill UPDATE_OPS where tf.keras's does not?
"""
import bnmatrix_scenario as common


def train(tf, cfg, scratch):
    batch_norm = common.require(tf, "compat.v1.keras.layers.BatchNormalization")
    estimator_module, model_fn = common.estimator_model_fn(tf, lambda: batch_norm())
    estimator = estimator_module.Estimator(model_fn=model_fn, model_dir=scratch)
    return common.train_and_evaluate(tf, estimator, cfg.steps, lambda: common.constant_input_fn(tf))


if __name__ == "__main__":
    common.main("compat_v1_keras_bn_custom_estimator", train)
