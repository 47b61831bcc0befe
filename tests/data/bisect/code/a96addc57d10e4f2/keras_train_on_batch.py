"""A tf.keras Model with BatchNormalization trained by calling train_on_batch on the constant batch,
once per step: the loop is the user's, each step Keras's own train function.
"""
import bnmatrix_scenario as common
import keras_fit


def train(tf, cfg, scratch):
    keras = tf.keras
    bn = keras_fit.batch_norm(keras)
    inputs = keras.Input(shape=(1,))
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(bn(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(common.LEARNING_RATE), loss="mse")
    x_train, y_train = keras_fit.batch()
    loss = None
    for _ in range(cfg.steps):
        loss = model.train_on_batch(x_train, y_train)
    loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    # The optimizer counts the updates it applied: the training steps that really ran.
    steps_ran = int(common.to_float(common.read_variable(tf, model.optimizer.iterations)))
    return keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)


if __name__ == "__main__":
    common.main("keras_train_on_batch", train)
