"""keras_fit under the global mixed precision policy mixed_float16: the layers compute in float16
and keep float32 variables. Do the moving statistics still update once per step, and in which dtype
are they kept?
"""
import bnmatrix_scenario as common
import keras_fit


def set_policy(tf, name):
    """The global Keras policy: mixed_precision.set_global_policy (2.4+), experimental.set_policy (2.1-2.3)."""
    mixed = common.require(tf, "keras.mixed_precision")
    setter = getattr(mixed, "set_global_policy", None) or getattr(
        getattr(mixed, "experimental", None), "set_policy", None)
    if setter is None:
        raise common.Unsupported("tf.keras.mixed_precision.set_global_policy",
                                 "absent in TF {}".format(tf.__version__))
    try:
        setter(name)
    except ValueError as exc:  # TF 1.15: "The global policy can only be set to a non-infer policy in TensorFlow 2"
        raise common.Unsupported("tf.keras.mixed_precision policy {}".format(name), str(exc))


def train(tf, cfg, scratch, policy="mixed_float16"):
    set_policy(tf, policy)
    try:
        model, bn, loss, x_train, y_train, steps_ran = keras_fit.fit(tf, cfg)
    except (TypeError, ValueError) as exc:  # TF 2.0: the layer cannot train under the policy (a dtype mismatch)
        raise common.Unsupported("BatchNormalization trained under the {} policy".format(policy), str(exc))
    observed = keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)
    observed["extra"]["policy"] = policy
    observed["extra"]["compute_dtype"] = str(getattr(bn, "compute_dtype", None) or getattr(bn, "_compute_dtype", ""))
    return observed


if __name__ == "__main__":
    common.main("keras_fit_mixed_float16", train)
