"""A subclassed Model whose call() runs its BatchNormalization layer without passing `training`,
trained in a GradientTape loop with `model(x, training=True)`: does the training flag reach the
nested layer (TF 2's call context), so that its statistics update?
"""
import bnmatrix_scenario as common
import keras_gradient_tape as tape


def subclassed(keras):
    class Net(keras.Model):
        def __init__(self):
            super(Net, self).__init__()
            self.bn = keras.layers.BatchNormalization()
            self.dense = keras.layers.Dense(1)

        def call(self, inputs):  # no `training`: the BN layer is called without it
            return self.dense(self.bn(inputs))

    return Net()


def train(tf, cfg, scratch):
    tape.eager(tf)
    model = subclassed(tf.keras)
    x = tf.constant(common.FEATURES, dtype=tf.float32)
    y = tf.constant(common.LABELS, dtype=tf.float32)
    model(x)  # build the weights (inference mode: no update)
    if tf.__version__.startswith("1."):
        optimizer = common.v1(tf).train.AdamOptimizer(common.LEARNING_RATE)
    else:
        optimizer = common.keras_optimizer(tf)
    step = tape.make_step(tf, model, optimizer, x, y)
    try:
        step()  # the first of the steps: it fails before the layers run where Keras cannot call it so
    except TypeError as exc:  # TF 1.8-1.14: Keras passes `training` to call() whatever call() accepts
        if "training" not in str(exc):
            raise
        raise common.Unsupported("model(x, training=True) on a Model whose call() takes no training", str(exc))
    return tape.observe(tf, model, model.bn, step, cfg.steps - 1, x, y)


if __name__ == "__main__":
    common.main("keras_subclass_nested_training", train)
