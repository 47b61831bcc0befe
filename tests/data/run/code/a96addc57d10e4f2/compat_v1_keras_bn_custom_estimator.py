"""tf.compat.v1.keras.layers.BatchNormalization in the custom model_fn of keras_bn_custom_estimator.

Does the TF1-compatibility Keras layer fill UPDATE_OPS where tf.keras's does not?
"""
import bnmatrix_scenario as common
import keras_bn_custom_estimator


def train(tf, cfg, scratch):
    return keras_bn_custom_estimator.train(tf, cfg, scratch, layer="compat.v1.keras.layers.BatchNormalization")


if __name__ == "__main__":
    common.main("compat_v1_keras_bn_custom_estimator", train)
