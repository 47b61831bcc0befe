"""tf.layers.BatchNormalization (tf.compat.v1.layers in 2.x) in a custom Estimator model_fn.

The report's first working pattern: tf.layers adds its update ops to UPDATE_OPS, so the train
op's control dependency runs them.
"""
import bnmatrix_scenario as common


def train(tf, cfg, scratch):
    common.estimator_api(tf)
    batch_norm = common.require(tf, "layers.BatchNormalization", compat=True)
    estimator_module, model_fn = common.estimator_model_fn(tf, lambda: batch_norm())
    estimator = estimator_module.Estimator(model_fn=model_fn, model_dir=scratch, config=common.run_config(tf))
    return common.train_and_evaluate(tf, estimator, cfg.steps, lambda: common.constant_input_fn(tf))


if __name__ == "__main__":
    common.main("layers_bn_custom_estimator", train)
