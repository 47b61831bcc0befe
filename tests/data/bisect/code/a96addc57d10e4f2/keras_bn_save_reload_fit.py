"""keras_fit in two halves around a save and a load in the version's native format (HDF5 on TF 1,
SavedModel on TF 2 with Keras 2, .keras with Keras 3): fit `steps / 2` steps, save, load, fit the
other half on the loaded model. Are the statistics kept by the save and still updated after the load
(`steps` updates in all)?
"""
import os

import bnmatrix_scenario as common
import keras_fit


def native_path(tf, keras, scratch):
    """Where to save, in the format this Keras writes natively, and the format's name."""
    major = str(getattr(keras, "__version__", "0")).split(".")[0]
    if major.isdigit() and int(major) >= 3:
        return os.path.join(scratch, "model.keras"), "keras"
    if tf.__version__.startswith("1."):
        return os.path.join(scratch, "model.h5"), "h5"
    return os.path.join(scratch, "saved_model"), "SavedModel"


def train(tf, cfg, scratch):
    keras = tf.keras
    first = cfg.steps // 2
    bn = keras_fit.batch_norm(keras)
    inputs = keras.Input(shape=(1,))
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(bn(inputs)))
    x_train, y_train = keras_fit.batch()
    _, first_steps = keras_fit.compile_and_fit(tf, keras, model, x_train, y_train, first)
    saved = [common.to_float(common.read_variable(tf, v)) for v in (bn.moving_mean, bn.moving_variance)]
    path, kind = native_path(tf, keras, scratch)
    model.save(path)
    loaded = keras.models.load_model(path)
    layers = [layer for layer in loaded.layers if "BatchNormalization" in type(layer).__name__]
    if len(layers) != 1:
        raise RuntimeError("the loaded model has {} BatchNormalization layers; expected 1".format(len(layers)))
    reloaded = layers[0]
    after_load = [common.to_float(common.read_variable(tf, v)) for v in (reloaded.moving_mean,
                                                                          reloaded.moving_variance)]
    loss, second_steps = keras_fit.compile_and_fit(tf, keras, loaded, x_train, y_train, cfg.steps - first,
                                                   compile_model=False)
    observed = keras_fit.observe(tf, loaded, reloaded, loss, x_train, y_train, steps_ran=first_steps + second_steps)
    observed["extra"].update(format=kind, moving_mean_saved=saved[0], moving_variance_saved=saved[1],
                             moving_mean_loaded=after_load[0], moving_variance_loaded=after_load[1])
    return observed


if __name__ == "__main__":
    common.main("keras_bn_save_reload_fit", train)
