"""Fine-tuning as the Keras transfer-learning guide advises: the base (with its BatchNormalization
layer, left trainable) is called as `base(inputs, training=False)` inside a model trained by fit.
The BN layer then runs in inference mode: do its statistics stay as they were?
"""
import bnmatrix_scenario as common
import keras_finetune_frozen_base as frozen
import keras_fit


def train(tf, cfg, scratch):
    keras = tf.keras
    base, bn = frozen.base_model(keras)
    model = frozen.with_head(keras, base, training=False)
    x_train, y_train = keras_fit.batch()
    loss, steps_ran = keras_fit.compile_and_fit(tf, keras, model, x_train, y_train, cfg.steps)
    return keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)


if __name__ == "__main__":
    common.main("keras_finetune_inference_call", train)
