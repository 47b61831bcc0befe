"""tf.keras.layers.BatchNormalization in a custom Estimator model_fn, train op under UPDATE_OPS.

The report's failing pattern: Keras layers do not add their updates to the global UPDATE_OPS
collection, so the control dependency is empty and the moving statistics never change.
"""
import bnmatrix_scenario as common


def train(tf, cfg, scratch, layer="keras.layers.BatchNormalization", fix_updates=False):
    """The report's model_fn with the BN layer `tf.<layer>`; `fix_updates` groups its updates with the train op."""
    batch_norm = common.require(tf, layer)
    estimator_module, model_fn = common.estimator_model_fn(tf, lambda: batch_norm(), fix_updates=fix_updates)
    estimator = estimator_module.Estimator(model_fn=model_fn, model_dir=scratch, config=common.run_config(tf))
    return common.train_and_evaluate(tf, estimator, cfg.steps, lambda: common.constant_input_fn(tf))


if __name__ == "__main__":
    common.main("keras_bn_custom_estimator", train)
