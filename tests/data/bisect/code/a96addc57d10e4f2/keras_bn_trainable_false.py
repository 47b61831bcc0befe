"""keras_fit with BatchNormalization(trainable=False): do the statistics update, and which
statistics does a training-mode forward pass use?

TF 2.0 changed this: a BN layer with trainable=False runs in inference mode (moving statistics,
no updates); before, trainable only froze gamma and beta.
"""
import bnmatrix_scenario as common
import keras_fit


def train(tf, cfg, scratch):
    model, bn, loss, x_train, y_train, steps_ran = keras_fit.fit(tf, cfg, batch_norm_options={"trainable": False})
    return observe_with_forward(tf, tf.keras, model, bn, loss, x_train, y_train, steps_ran)


def observe_with_forward(tf, keras, model, bn, loss, x_train, y_train, steps_ran):
    """keras_fit.observe, with a training-mode forward pass of the BN layer alone after fit, on the same batch:
    which statistics does it normalise with? The statistics reported are those fit left."""
    moving_mean = common.read_variable(tf, bn.moving_mean)
    moving_variance = common.read_variable(tf, bn.moving_variance)
    inputs = keras.Input(shape=(1,))
    probe = keras.Model(inputs=inputs, outputs=bn(inputs, training=True))
    outputs = probe.predict(x_train, batch_size=len(common.FEATURES), verbose=0)
    forward = {"inputs": common.flat_floats(x_train), "outputs": common.flat_floats(outputs),
               "epsilon": float(bn.epsilon), "gamma": common.to_float(common.read_variable(tf, bn.gamma)),
               "beta": common.to_float(common.read_variable(tf, bn.beta)),
               "moving_mean": common.to_float(moving_mean), "moving_variance": common.to_float(moving_variance)}
    observed = keras_fit.observe(tf, model, bn, loss, x_train, y_train, forward=forward, steps_ran=steps_ran)
    # The statistics as fit left them (the probe may update them again in eager mode).
    observed["layers"]["bn"].update(moving_mean=common.to_float(moving_mean),
                                    moving_variance=common.to_float(moving_variance))
    return observed


if __name__ == "__main__":
    common.main("keras_bn_trainable_false", train)
