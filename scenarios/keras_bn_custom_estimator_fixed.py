"""keras_bn_custom_estimator with the documented fix: the Keras layer's own updates grouped with
the train op (the TF 2 migration guide, "Custom model_fn with minimal changes")."""
import bnmatrix_scenario as common


def train(tf, cfg, scratch):
    batch_norm = common.require(tf, "keras.layers.BatchNormalization")
    estimator_module, model_fn = common.estimator_model_fn(tf, lambda: batch_norm(), fix_updates=True)
    estimator = estimator_module.Estimator(model_fn=model_fn, model_dir=scratch)
    return common.train_and_evaluate(tf, estimator, cfg.steps, lambda: common.constant_input_fn(tf))


if __name__ == "__main__":
    common.main("keras_bn_custom_estimator_fixed", train)
