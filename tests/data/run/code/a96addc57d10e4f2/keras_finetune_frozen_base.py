"""Fine-tuning a frozen base: a base model holding a BatchNormalization layer is frozen with
`base.trainable = False`, a Dense head goes on top, and the whole model is compiled and fit. Do the
base's statistics update, and which statistics does a training-mode forward pass of its BN use?
"""
import bnmatrix_scenario as common
import keras_bn_trainable_false
import keras_fit


def base_model(keras):
    """Input -> BatchNormalization: the pretrained part, with its BN layer."""
    bn = keras_fit.batch_norm(keras)
    inputs = keras.Input(shape=(1,))
    return keras.Model(inputs=inputs, outputs=bn(inputs)), bn


def with_head(keras, base, training=None):
    """base -> Dense(1), calling the base with `training` where it is given (the guide's training=False)."""
    inputs = keras.Input(shape=(1,))
    features = base(inputs) if training is None else base(inputs, training=training)
    return keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(features))


def train(tf, cfg, scratch):
    keras = tf.keras
    base, bn = base_model(keras)
    base.trainable = False
    model = with_head(keras, base)
    x_train, y_train = keras_fit.batch()
    loss, steps_ran = keras_fit.compile_and_fit(tf, keras, model, x_train, y_train, cfg.steps)
    return keras_bn_trainable_false.observe_with_forward(tf, keras, model, bn, loss, x_train, y_train, steps_ran)


if __name__ == "__main__":
    common.main("keras_finetune_frozen_base", train)
