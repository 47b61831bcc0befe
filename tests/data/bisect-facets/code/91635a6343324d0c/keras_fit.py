"""A tf.keras Model with BatchNormalization, trained with compile and fit on the constant batch.

The everyday Keras path: fit runs the model's updates itself, so no collection is involved. Each
epoch is one step (the whole batch of 4), `steps` epochs in all.
"""
import bnmatrix_scenario as common


def fit(tf, cfg, four_d=False, batch_norm_options=None, keras=None):
    """Build Input -> BN -> Dense(1) (4-D input (N, 1, 1, 1) with `four_d`), fit, return (model, bn, loss)."""
    import numpy as np
    keras = keras or tf.keras
    try:
        bn = keras.layers.BatchNormalization(**(batch_norm_options or {}))
    except (TypeError, ValueError) as exc:  # an argument this Keras does not have (fused= in Keras 3: ValueError)
        raise common.Unsupported("keras.layers.BatchNormalization({})".format(
            ", ".join("{}={!r}".format(k, v) for k, v in sorted((batch_norm_options or {}).items()))), str(exc))
    shape = (1, 1, 1) if four_d else (1,)
    inputs = keras.Input(shape=shape)
    x = bn(inputs)
    if four_d:
        x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    optimizer = keras.optimizers.Adam(common.LEARNING_RATE)
    model.compile(optimizer=optimizer, loss="mse")
    x_train = np.array(common.FEATURES, dtype=np.float32).reshape((-1,) + shape)
    y_train = np.array(common.LABELS, dtype=np.float32)
    major = str(getattr(keras, "__version__", "0")).split(".")[0]
    if major.isdigit() and int(major) >= 3:
        # Keras 3 sets each epoch over arrays up anew (about 25 ms, the most of a step): from a repeated dataset of
        # the same batch, each epoch takes its one step at a fifth of that, with the same numbers.
        batches = tf.data.Dataset.from_tensors((x_train, y_train)).repeat()
        history = model.fit(batches, epochs=cfg.steps, steps_per_epoch=1, verbose=0)
    else:
        history = model.fit(x_train, y_train, batch_size=len(common.FEATURES), epochs=cfg.steps, shuffle=False,
                            verbose=0)
    return model, bn, history.history["loss"][-1], x_train, y_train


def observe(tf, model, bn, train_loss, x_train, y_train, forward=None):
    eval_loss = model.evaluate(x_train, y_train, batch_size=len(common.FEATURES), verbose=0)
    return common.observations(
        {"bn": common.layer(common.read_variable(tf, bn.moving_mean), common.read_variable(tf, bn.moving_variance),
                            common.feature_values(), forward=forward)},
        train_loss=float(train_loss), eval_loss=float(eval_loss if not isinstance(eval_loss, list) else eval_loss[0]),
        extra={"fused": getattr(bn, "fused", None), "epsilon": float(bn.epsilon)})


def train(tf, cfg, scratch):
    model, bn, loss, x_train, y_train = fit(tf, cfg)
    return observe(tf, model, bn, loss, x_train, y_train)


if __name__ == "__main__":
    common.main("keras_fit", train)
