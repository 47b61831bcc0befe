"""Keras 3's own BatchNormalization (import keras, TensorFlow backend), trained with compile and
fit on the constant batch: the path tf.keras takes from TF 2.16 on."""
import os

import bnmatrix_scenario as common
import keras_fit


def train(tf, cfg, scratch):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError as exc:
        raise common.Unsupported("keras 3", "no keras package: {}".format(exc))
    version = getattr(keras, "__version__", "?")
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 3:
        raise common.Unsupported("keras 3", "keras {} is installed; Keras 3 comes with TF 2.16 and later".format(
            version))
    model, bn, loss, x_train, y_train, steps_ran = keras_fit.fit(tf, cfg, keras=keras)
    observed = keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)
    observed["extra"]["keras"] = version
    observed["extra"]["backend"] = keras.backend.backend()
    return observed


if __name__ == "__main__":
    common.main("keras3_bn_fit", train)
