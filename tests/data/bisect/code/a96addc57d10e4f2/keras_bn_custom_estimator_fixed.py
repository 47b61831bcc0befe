"""keras_bn_custom_estimator with the documented fix: the Keras layer's own updates grouped with
the train op (the TF 2 migration guide, "Custom model_fn with minimal changes")."""
import bnmatrix_scenario as common
import keras_bn_custom_estimator


def train(tf, cfg, scratch):
    return keras_bn_custom_estimator.train(tf, cfg, scratch, fix_updates=True)


if __name__ == "__main__":
    common.main("keras_bn_custom_estimator_fixed", train)
