"""Shared helper of the bnmatrix scenarios: the data, the closed-form verdict and the JSON result.

Runs inside a cell with only the standard library, NumPy and TensorFlow, on Python 3.6 to 3.13,
so it keeps to Python 3.6 syntax. Each scenario script calls `main(name, train)`; `train(tf, cfg)`
builds the pattern, trains `cfg.steps` steps on the constant batch and returns its observations.
"""
import argparse
import importlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback

RESULT_SCHEMA = "bnmatrix.scenario/1"
RESULT_MARKER = "BNMATRIX_RESULT "
# The tiny regression of the original report: a constant batch x, labels y = -x.
FEATURES = [[0.0], [1.0], [2.0], [3.0]]
LABELS = [[0.0], [-1.0], [-2.0], [-3.0]]
LEARNING_RATE = 0.001
# Keras and tf.layers BatchNormalization both default to momentum 0.99.
MOMENTUM = 0.99
# float32 statistics after a few hundred updates agree with the closed form far closer than this.
MEAN_TOLERANCE = 1e-4
STALE_TOLERANCE = 1e-7


class Unsupported(Exception):
    """An API the pattern needs is absent in this TensorFlow."""

    def __init__(self, api, message):
        Exception.__init__(self, "{}: {}".format(api, message))
        self.api = api
        self.message = message


def require(tf, path, compat=False):
    """Resolve `tf.<path>` (or the TF1 API's, with compat) or raise Unsupported with TF's own message."""
    obj = v1(tf) if compat else tf
    shown = "{}.{}".format(v1_name(tf) if compat else "tf", path)
    for part in path.split("."):
        try:
            obj = getattr(obj, part)
        except (AttributeError, ImportError) as exc:
            raise Unsupported(shown, str(exc) or "{} has no attribute {}".format(shown, part))
    return obj


def v1(tf):
    """The TF1 API: `tf.compat.v1` where it exists (1.13+), the top level before that."""
    return getattr(getattr(tf, "compat", None), "v1", tf)


def v1_name(tf):
    return "tf.compat.v1" if v1(tf) is not tf else "tf"


def batch_statistics():
    """Mean and population variance of the constant batch, as BatchNormalization computes them."""
    values = [row[0] for row in FEATURES]
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, variance


def expected_statistics(steps, momentum=MOMENTUM):
    """Moving mean and variance after `steps` updates from (0, 1) on the constant batch."""
    mean, variance = batch_statistics()
    decay = momentum ** steps
    return mean * (1.0 - decay), variance + (1.0 - variance) * decay


def effective_updates(moving_mean, momentum=MOMENTUM):
    """The number of updates k for which mu * (1 - m**k) equals the observed moving mean."""
    mean, _ = batch_statistics()
    remaining = 1.0 - moving_mean / mean
    if remaining <= 0.0:
        return None  # past the batch mean: no number of updates explains it
    if remaining >= 1.0:
        return 0.0
    return math.log(remaining) / math.log(momentum)


def verdict(steps, moving_mean, moving_variance, momentum=MOMENTUM):
    """(status, reason) of the observed statistics against the closed form for `steps` updates."""
    expected_mean, expected_variance = expected_statistics(steps, momentum)
    if abs(moving_mean) <= STALE_TOLERANCE and abs(moving_variance - 1.0) <= STALE_TOLERANCE:
        return "stale", "moving statistics still at their initial values (0, 1)"
    updates = effective_updates(moving_mean, momentum)
    mean_ok = abs(moving_mean - expected_mean) <= MEAN_TOLERANCE * max(1.0, abs(expected_mean))
    variance_ok = abs(moving_variance - expected_variance) <= MEAN_TOLERANCE * max(1.0, expected_variance)
    if mean_ok and variance_ok:
        return "updated", "matches the closed form for {} updates".format(steps)
    if updates is None:
        return "wrong", "moving mean {:.6g} is beyond the batch mean".format(moving_mean)
    if mean_ok:
        return "wrong", "moving mean fits {} updates but moving variance {:.6g} != expected {:.6g}".format(
            steps, moving_variance, expected_variance)
    ratio = updates / steps if steps else float("inf")
    kind = "partial" if ratio < 1.0 else "extra"
    return "wrong", "{:.2f} effective updates for {} steps ({:.2f}x, {})".format(updates, steps, ratio, kind)


def to_float(value):
    """A scalar float from a TF/NumPy value of shape () or (1,)."""
    flat = getattr(value, "flat", None)
    return float(flat[0]) if flat is not None else float(value)


def visible_devices(tf):
    """Device types TF sees, e.g. ['CPU'] or ['CPU', 'GPU']."""
    config = getattr(tf, "config", None)
    lister = getattr(config, "list_physical_devices", None) or getattr(
        getattr(config, "experimental", None), "list_physical_devices", None)
    if lister is not None:
        return sorted(set(d.device_type for d in lister()))
    from tensorflow.python.client import device_lib  # TF 1.x
    return sorted(set(d.device_type for d in device_lib.list_local_devices()))


def build_info(tf):
    """CUDA and cuDNN versions TF was built with, where TF says so."""
    getter = getattr(getattr(tf, "sysconfig", None), "get_build_info", None)
    if getter is None:
        return {}
    info = getter()
    return dict((k, str(info[k])) for k in ("cuda_version", "cudnn_version") if k in info)


def keras_version(tf):
    """The version of the Keras behind tf.keras: tf.keras's own (1.x), keras (2.x), or tf_keras."""
    try:
        package = tf.keras.layers.Dense.__module__.split(".")[0]
        module = tf.keras if package == "tensorflow" else importlib.import_module(package)
        version = getattr(module, "__version__", None)
    except Exception:  # an exotic build without tf.keras: the field stays empty
        version = None
    return str(version) if version is not None else None


def quiet(tf):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        v1(tf).logging.set_verbosity(v1(tf).logging.ERROR)
    except AttributeError:
        pass


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Run one bnmatrix scenario and print its JSON result.")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--tf-version", default=None, help="the TF version the cell installed")
    return parser.parse_args(argv)


def main(name, train, argv=None):
    """Run `train` for scenario `name`, print one JSON result line, exit 0 unless output failed."""
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    result = {
        "schema": RESULT_SCHEMA,
        "scenario": name,
        "status": "error",
        "reason": None,
        "python": platform.python_version(),
        "device": cfg.device,
        "steps": cfg.steps,
        "momentum": MOMENTUM,
        "tf_version": None,
        "keras_version": None,
        "devices_seen": None,
        "build_info": {},
        "update_ops": None,
        "moving_mean": None,
        "moving_variance": None,
        "effective_updates": None,
        "train_loss": None,
        "eval_loss": None,
        "details": {},
        "error": None,
    }
    mean, variance = batch_statistics()
    result["batch_mean"], result["batch_variance"] = mean, variance
    result["expected_moving_mean"], result["expected_moving_variance"] = expected_statistics(cfg.steps)
    scratch = tempfile.mkdtemp(prefix="bnmatrix-")
    try:
        import tensorflow as tf
        quiet(tf)
        result["tf_version"] = tf.__version__
        result["keras_version"] = keras_version(tf)
        result["build_info"] = build_info(tf)
        result["devices_seen"] = visible_devices(tf)
        if cfg.tf_version and tf.__version__ != cfg.tf_version:
            raise RuntimeError("imported TF {} but the cell installed {}".format(tf.__version__, cfg.tf_version))
        if cfg.device == "gpu" and "GPU" not in result["devices_seen"]:
            raise RuntimeError("GPU cell, but TF sees only {}".format(result["devices_seen"]))
        observed = train(tf, cfg, scratch)
        result.update(observed)
        result["effective_updates"] = effective_updates(result["moving_mean"])
        result["status"], result["reason"] = verdict(cfg.steps, result["moving_mean"], result["moving_variance"])
    except Unsupported as exc:
        result["status"], result["reason"] = "unsupported", str(exc)
        result["error"] = {"type": "Unsupported", "api": exc.api, "message": exc.message}
    except Exception as exc:
        result["status"], result["reason"] = "error", "{}: {}".format(type(exc).__name__, exc)
        tail = traceback.format_exc().splitlines()[-25:]
        result["error"] = {"type": type(exc).__name__, "message": str(exc), "traceback": "\n".join(tail)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result["duration_s"] = round(time.time() - started, 3)
    sys.stdout.write(RESULT_MARKER + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def estimator_statistics(estimator):
    """(moving_mean, moving_variance) of the single BN layer, read by suffix, not by checkpoint name.

    TF 2.0's model_to_estimator names them `layer_with_weights-0/moving_mean/.ATTRIBUTES/...`.
    """
    found = {}
    for name in estimator.get_variable_names():
        parts = name.split("/")
        if "OPTIMIZER_SLOT" in parts or any(p.startswith("Adam") for p in parts):
            continue
        for stat in ("moving_mean", "moving_variance"):
            if stat in parts:
                found.setdefault(stat, []).append(name)
    for stat in ("moving_mean", "moving_variance"):
        if len(found.get(stat, [])) != 1:
            raise RuntimeError("expected one {} variable in the checkpoint, found {}".format(
                stat, found.get(stat, [])))
    return (to_float(estimator.get_variable_value(found["moving_mean"][0])),
            to_float(estimator.get_variable_value(found["moving_variance"][0])))


def loss_capture_hook(tf):
    """A SessionRunHook that keeps the last training loss the Estimator reports."""
    compat = v1(tf)
    run_args = compat.train.SessionRunArgs

    class LossCapture(compat.train.SessionRunHook):
        def __init__(self):
            self.loss = None
            self.update_ops = None
            self._tensor = None

        def begin(self):
            self.update_ops = len(compat.get_collection(compat.GraphKeys.UPDATE_OPS))
            # The Estimator adds the EstimatorSpec's loss last to this collection.
            losses = compat.get_collection(compat.GraphKeys.LOSSES)
            self._tensor = losses[-1] if losses else None

        def before_run(self, run_context):
            return run_args(self._tensor) if self._tensor is not None else None

        def after_run(self, run_context, run_values):
            if self._tensor is not None:
                self.loss = float(run_values.results)

    return LossCapture()


def estimator_api(tf):
    """The Estimator module, or Unsupported where TF removed it (2.16+)."""
    compat = v1(tf)
    if getattr(compat, "estimator", None) is None and getattr(tf, "estimator", None) is None:
        raise Unsupported("tf.estimator", "neither tf.estimator nor {}.estimator exists in TensorFlow {} "
                          "(the Estimator API was removed in 2.16)".format(v1_name(tf), tf.__version__))
    return getattr(compat, "estimator", None) or tf.estimator


def constant_input_fn(tf):
    features = tf.constant(FEATURES, dtype=tf.float32)
    labels = tf.constant(LABELS, dtype=tf.float32)
    return features, labels


def train_and_evaluate(tf, estimator, steps, input_fn):
    """Train `steps` steps, evaluate once; returns the common observations of an Estimator pattern."""
    hook = loss_capture_hook(tf)
    estimator.train(input_fn, steps=steps, hooks=[hook])
    evaluation = estimator.evaluate(input_fn, steps=1)
    moving_mean, moving_variance = estimator_statistics(estimator)
    return {
        "moving_mean": moving_mean,
        "moving_variance": moving_variance,
        "update_ops": hook.update_ops,
        "train_loss": hook.loss,
        "eval_loss": float(evaluation["loss"]),
    }
