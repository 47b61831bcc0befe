"""A tf.keras Model with BatchNormalization, trained with compile and fit on the constant batch.

The everyday Keras path: fit runs the model's updates itself, so no collection is involved. Each
epoch is one step (the whole batch of 4), `steps` epochs in all.
"""
import bnmatrix_scenario as common


def fit(tf, cfg, four_d=False, batch_norm_options=None, keras=None, features=None):
    """Build Input -> BN -> Dense(1) (4-D input (N, 1, 1, 1) with `four_d`), fit on the constant batch (or on
    `features`, labels their negatives); (model, bn, loss, x, y, steps ran)."""
    keras = keras or tf.keras
    bn = batch_norm(keras, batch_norm_options)
    shape = (1, 1, 1) if four_d else (1,)
    inputs = keras.Input(shape=shape)
    x = bn(inputs)
    if four_d:
        x = keras.layers.Flatten()(x)
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(x))
    x_train, y_train = batch(shape, features)
    loss, steps_ran = compile_and_fit(tf, keras, model, x_train, y_train, cfg.steps)
    return model, bn, loss, x_train, y_train, steps_ran


def batch_norm(keras, options=None):
    """keras.layers.BatchNormalization(**options), or Unsupported where this Keras has no such argument."""
    try:
        return keras.layers.BatchNormalization(**(options or {}))
    except (TypeError, ValueError) as exc:  # an argument this Keras does not have (fused= in Keras 3: ValueError)
        raise common.Unsupported("keras.layers.BatchNormalization({})".format(
            ", ".join("{}={!r}".format(k, v) for k, v in sorted((options or {}).items()))), str(exc))


def batch(shape=(1,), features=None):
    """The constant batch (or `features`, labels their negatives) as NumPy arrays of `shape` per sample."""
    import numpy as np
    x = np.array(common.FEATURES if features is None else features, dtype=np.float32)
    y = np.array(common.LABELS, dtype=np.float32) if features is None else -x
    return x.reshape((-1,) + tuple(shape)), y


def compile_and_fit(tf, keras, model, x_train, y_train, steps, compile_model=True):
    """Compile `model` (Adam, MSE) unless told not to, fit `steps` steps of the whole batch; (last loss, steps ran)."""
    if compile_model:
        model.compile(optimizer=keras.optimizers.Adam(common.LEARNING_RATE), loss="mse")
    major = str(getattr(keras, "__version__", "0")).split(".")[0]
    counter = step_counter(keras)
    if major.isdigit() and int(major) >= 3:
        # Keras 3 sets each epoch over arrays up anew (about 25 ms, the most of a step): from a repeated dataset of
        # the same batch, each epoch takes its one step at a fifth of that, with the same numbers.
        batches = tf.data.Dataset.from_tensors((x_train, y_train)).repeat()
        history = model.fit(batches, epochs=steps, steps_per_epoch=1, verbose=0, callbacks=[counter])
    else:
        history = model.fit(x_train, y_train, batch_size=len(common.FEATURES), epochs=steps, shuffle=False,
                            verbose=0, callbacks=[counter])
    return history.history["loss"][-1], counter.steps


def step_counter(keras):
    """A callback that counts the training steps fit really ran (on_batch_end: every Keras has it)."""
    class StepCounter(keras.callbacks.Callback):
        steps = 0

        def on_batch_end(self, batch, logs=None):
            self.steps += 1

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1

    return StepCounter()


def observe(tf, model, bn, train_loss, x_train, y_train, forward=None, steps_ran=None, values=None):
    eval_loss = model.evaluate(x_train, y_train, batch_size=len(common.FEATURES), verbose=0)
    return common.observations(
        {"bn": common.layer(common.read_variable(tf, bn.moving_mean), common.read_variable(tf, bn.moving_variance),
                            common.feature_values() if values is None else values, forward=forward)},
        train_loss=float(train_loss), eval_loss=float(eval_loss if not isinstance(eval_loss, list) else eval_loss[0]),
        # a layer revived from a SavedModel (TF 2.0) may lack fused and epsilon
        extra={"fused": getattr(bn, "fused", None), "epsilon": getattr(bn, "epsilon", None)}, steps_ran=steps_ran)


def train(tf, cfg, scratch):
    model, bn, loss, x_train, y_train, steps_ran = fit(tf, cfg)
    return observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)


if __name__ == "__main__":
    common.main("keras_fit", train)
