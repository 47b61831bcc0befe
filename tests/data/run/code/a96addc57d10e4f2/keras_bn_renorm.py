"""keras_fit with BatchNormalization(renorm=True) (batch renormalization): the layer also keeps
renormalization statistics; are the moving mean and variance still updated once per step?

Keras 3 removed renorm (ValueError there: unsupported); keras-team/keras#22047 brings it back.
"""
import bnmatrix_scenario as common
import keras_fit


def train(tf, cfg, scratch):
    model, bn, loss, x_train, y_train, steps_ran = keras_fit.fit(tf, cfg, batch_norm_options={"renorm": True})
    return keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)


if __name__ == "__main__":
    common.main("keras_bn_renorm", train)
