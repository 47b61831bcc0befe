"""A tf.keras Model with BatchNormalization, converted by tf.keras.estimator.model_to_estimator.

The report's second working pattern: the Keras train function includes the layer's updates.
"""
import bnmatrix_scenario as common


def train(tf, cfg, scratch):
    common.estimator_api(tf)
    to_estimator = common.require(tf, "keras.estimator.model_to_estimator")
    keras = tf.keras
    inputs = keras.Input(shape=(1,))
    x = keras.layers.BatchNormalization()(inputs)
    outputs = keras.layers.Dense(1)(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.compile(optimizer=keras.optimizers.Adam(common.LEARNING_RATE), loss="mse", metrics=["accuracy"])
    estimator = to_estimator(keras_model=model, model_dir=scratch, config=common.run_config(tf))
    return common.train_and_evaluate(tf, estimator, cfg.steps, lambda: common.constant_input_fn(tf))


if __name__ == "__main__":
    common.main("keras_bn_model_to_estimator", train)
