"""An eager custom training loop: a tf.keras Model with BatchNormalization called with
training=True under tf.GradientTape, gradients applied by the optimizer.

In eager mode the layer updates its moving statistics as a side effect of the call; TF 1.x runs
the same loop after tf.enable_eager_execution().
"""
import bnmatrix_scenario as common


def eager(tf):
    """Eager execution, switched on in TF 1.x before anything else (even asking tf.executing_eagerly()
    first fixes the mode there, and enabling it then fails)."""
    if tf.__version__.startswith("1."):
        common.require(tf, "enable_eager_execution", compat=True)()
    common.require(tf, "GradientTape")


def build(tf):
    keras = tf.keras
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([bn, keras.layers.Dense(1)])
    x = tf.constant(common.FEATURES, dtype=tf.float32)
    y = tf.constant(common.LABELS, dtype=tf.float32)
    model(x)  # build the weights outside any tf.function (this call is in inference mode: no update)
    if tf.__version__.startswith("1."):
        optimizer = common.v1(tf).train.AdamOptimizer(common.LEARNING_RATE)  # 1.x Keras optimizers are not eager
    else:
        optimizer = common.keras_optimizer(tf)
    return model, bn, optimizer, x, y


def make_step(tf, model, optimizer, x, y, training=True):
    """One training step; `training` False calls the model as `model(x)`, without the argument."""
    def step():
        with tf.GradientTape() as tape:
            outputs = model(x, training=True) if training else model(x)
            loss = tf.reduce_mean(tf.square(outputs - y))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss
    return step


def observe(tf, model, bn, step, steps, x, y):
    loss = None
    for _ in range(steps):
        loss = step()
    eval_loss = tf.reduce_mean(tf.square(model(x, training=False) - y))
    return common.observations(
        {"bn": common.layer(bn.moving_mean.numpy(), bn.moving_variance.numpy(), common.feature_values())},
        train_loss=float(loss), eval_loss=float(eval_loss))


def train(tf, cfg, scratch):
    eager(tf)
    model, bn, optimizer, x, y = build(tf)
    return observe(tf, model, bn, make_step(tf, model, optimizer, x, y), cfg.steps, x, y)


if __name__ == "__main__":
    common.main("keras_gradient_tape", train)
