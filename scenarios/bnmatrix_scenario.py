"""The helper every bnmatrix scenario imports: run a pattern, print what it observed.

Scenarios observe; the host judges. A scenario script calls `main(name, train)`; `train(tf, cfg,
scratch)` builds the pattern, trains `cfg.steps` steps and returns its observations (see
`observations`). This module prints them as one `BNMATRIX_RESULT {json}` line (schema
bnmatrix.scenario/2, docs/scenarios.md); bnmatrix's verdict.py turns them into a status.

Runs inside a cell with only the standard library, NumPy and TensorFlow, on Python 3.6 to 3.13,
so it keeps to Python 3.6 syntax. bnmatrix puts its folder on PYTHONPATH in every cell, so a
scenario in any folder can `import bnmatrix_scenario`.
"""
import argparse
import importlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback

RESULT_SCHEMA = "bnmatrix.scenario/2"
RESULT_MARKER = "BNMATRIX_RESULT "
# The tiny regression of the original report: a constant batch x, labels y = -x.
FEATURES = [[0.0], [1.0], [2.0], [3.0]]
LABELS = [[0.0], [-1.0], [-2.0], [-3.0]]
LEARNING_RATE = 0.001
# Keras and tf.layers BatchNormalization both default to momentum 0.99.
MOMENTUM = 0.99


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


def feature_values():
    """The constant batch as a flat list: what a BN layer fed FEATURES normalises."""
    return [row[0] for row in FEATURES]


def layer(moving_mean, moving_variance, values=None, alternatives=None, forward=None):
    """One BN layer's observation: its statistics after training and the batch values it saw.

    `values` None means the layer is shown but not judged (its input changed during training).
    `alternatives` maps a label to other data the statistics might follow (see `statistics_data`);
    `forward` is a training-mode forward pass (inputs, outputs, epsilon, gamma, beta and the moving
    statistics just before it), from which the host tells which statistics it normalised with.
    The dtype of the moving mean as read (a NumPy value or a variable) is reported too.
    """
    observed = {"moving_mean": to_float(moving_mean), "moving_variance": to_float(moving_variance)}
    dtype = dtype_name(moving_mean)
    if dtype is not None:
        observed["dtype"] = dtype
    if values is not None:
        observed["data"] = {"values": [float(v) for v in values]}
    if alternatives:
        observed["alternatives"] = dict(alternatives)
    if forward is not None:
        observed["forward"] = forward
    return observed


def dtype_name(value):
    """"float32" for a NumPy value, a TF or Keras variable (TF 1's "float32_ref" too); None where there is none."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return None
    dtype = getattr(dtype, "base_dtype", dtype)
    name = getattr(dtype, "name", None) or str(dtype)
    name = name.replace("_ref", "")
    return name if re.match(r"^[a-z0-9_]{1,32}$", name) else None


def statistics_data(n, mean, variance_biased, variance_unbiased):
    """Data given by its statistics rather than its values (for `layer`'s alternatives)."""
    return {"n": n, "mean": mean, "variance_biased": variance_biased, "variance_unbiased": variance_unbiased}


def read_variable(tf, variable):
    """A variable's value in eager TF 2 / Keras 3 and in TF 1 graph mode alike."""
    eager = getattr(tf, "executing_eagerly", lambda: False)()
    if eager and hasattr(variable, "numpy"):
        return variable.numpy()
    return tf.keras.backend.get_value(variable)


def keras_optimizer(tf):
    """Adam for a Keras model: tf.keras's own (1.x and 2.x) with the report's learning rate."""
    return tf.keras.optimizers.Adam(LEARNING_RATE)


def observations(layers, update_ops=None, train_loss=None, eval_loss=None, extra=None, momentum=MOMENTUM,
                 steps_ran=None):
    """What `train` returns: layers by name (see `layer`), the UPDATE_OPS size, losses, extra numbers,
    the momentum of the reported layers (the closed form is checked with it) and, where the framework
    drives the loop, how many training steps really ran (`steps_ran`: a hook's or a callback's count)."""
    return {"layers": layers, "update_ops": update_ops, "train_loss": train_loss, "eval_loss": eval_loss,
            "extra": extra or {}, "momentum": momentum, "steps_ran": steps_ran}


def to_float(value):
    """A scalar float from a TF/NumPy value of shape () or (1,)."""
    flat = getattr(value, "flat", None)
    return float(flat[0]) if flat is not None else float(value)


def flat_floats(value):
    """A flat list of floats from a TF/NumPy array."""
    return [float(v) for v in getattr(value, "flat", value)]


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


def describe_environment(tf, result):
    """The Keras behind tf.keras, the devices TF sees and what it was built with, into `result`."""
    result["keras_version"] = keras_version(tf)
    result["build_info"] = build_info(tf)
    result["devices_seen"] = visible_devices(tf)


def quiet(tf):
    try:
        v1(tf).logging.set_verbosity(v1(tf).logging.ERROR)
    except AttributeError:
        pass


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Run one bnmatrix scenario and print its observations.")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--tf-version", default=None, help="the TF version the cell installed")
    return parser.parse_args(argv)


def finite(value):
    """JSON-safe: NaN and infinities become None (the host refuses them), containers recursively."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return dict((k, finite(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def process_age():
    """Seconds since this process started (from /proc), or None where there is no /proc: what starting the
    interpreter and importing the scenario took before main() ran."""
    try:
        with open("/proc/self/stat") as stat:
            after_name = stat.read().rsplit(")", 1)[1].split()  # field 3 (state) onwards
        with open("/proc/uptime") as uptime:
            now = float(uptime.read().split()[0])
        return round(max(0.0, now - int(after_name[19]) / os.sysconf("SC_CLK_TCK")), 3)  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def main(name, train, argv=None):
    """Run `train` for scenario `name`, print one result line, exit 0 unless printing failed."""
    startup = process_age()
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.time()
    timings = {"startup_s": startup}
    clock = [started]

    def lap(phase):
        """The time since the last lap, as `phase` (seconds): where a scenario's time goes."""
        now = time.time()
        timings[phase] = round(now - clock[0], 3)
        clock[0] = now

    result = {
        "schema": RESULT_SCHEMA,
        "scenario": name,
        "outcome": "error",
        "python": platform.python_version(),
        "device": cfg.device,
        "steps": cfg.steps,
        "momentum": MOMENTUM,
        "tf_version": None,
        "keras_version": None,
        "devices_seen": None,
        "build_info": {},
        "layers": {},
        "update_ops": None,
        "steps_ran": None,
        "train_loss": None,
        "eval_loss": None,
        "extra": {},
        "unsupported": None,
        "error": None,
    }
    scratch = tempfile.mkdtemp(prefix="bnmatrix-")
    tf = None
    try:
        import tensorflow as tf
        quiet(tf)
        result["tf_version"] = tf.__version__
        lap("import_s")
        # train() comes first: on TF 1.x, listing devices builds a graph, after which a scenario can no
        # longer switch eager execution on.
        result.update(train(tf, cfg, scratch))
        lap("train_s")
        describe_environment(tf, result)
        if cfg.device == "gpu" and "GPU" not in result["devices_seen"]:
            raise RuntimeError("GPU cell, but TF sees only {}".format(result["devices_seen"]))
        result["outcome"] = "observed"
    except Unsupported as exc:
        result["outcome"] = "unsupported"
        result["unsupported"] = {"api": exc.api, "message": exc.message}
    except Exception as exc:
        tail = traceback.format_exc().splitlines()[-25:]
        result["outcome"] = "error"
        result["error"] = {"type": type(exc).__name__, "message": str(exc), "traceback": "\n".join(tail)}
    finally:
        for phase in ("import_s", "train_s"):  # up to where the import or the pattern failed
            if phase not in timings:
                lap(phase)
        shutil.rmtree(scratch, ignore_errors=True)
    if tf is not None and result["devices_seen"] is None:
        try:
            describe_environment(tf, result)
        except Exception:  # an error result keeps its own error; the environment stays unknown
            pass
    lap("teardown_s")  # the environment read, the scratch folder removed
    result["duration_s"] = round(time.time() - started, 3)
    result["timings"] = dict((k, v) for k, v in timings.items() if v is not None)
    sys.stdout.write(RESULT_MARKER + json.dumps(finite(result), sort_keys=True, allow_nan=False) + "\n")
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
    return (estimator.get_variable_value(found["moving_mean"][0]),
            estimator.get_variable_value(found["moving_variance"][0]))


def loss_capture_hook(tf):
    """A SessionRunHook that keeps the last training loss, the size of UPDATE_OPS and how many times training ran."""
    compat = v1(tf)
    run_args = compat.train.SessionRunArgs

    class LossCapture(compat.train.SessionRunHook):
        def __init__(self):
            self.loss = None
            self.update_ops = None
            self.runs = 0  # how many times the train op really ran
            self._tensor = None

        def begin(self):
            self.update_ops = len(compat.get_collection(compat.GraphKeys.UPDATE_OPS))
            # The Estimator adds the EstimatorSpec's loss last to this collection.
            losses = compat.get_collection(compat.GraphKeys.LOSSES)
            self._tensor = losses[-1] if losses else None

        def before_run(self, run_context):
            return run_args(self._tensor) if self._tensor is not None else None

        def after_run(self, run_context, run_values):
            self.runs += 1
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


def run_config(tf):
    """An Estimator's RunConfig without the summaries no pattern reads. Its checkpoints stay (evaluation restores one,
    and the statistics are read from the last), and so does the step-rate log: TF 1.8 refuses an Estimator without
    it."""
    return estimator_api(tf).RunConfig(save_summary_steps=None)


def constant_input_fn(tf, features=None):
    features = tf.constant(FEATURES if features is None else features, dtype=tf.float32)
    labels = tf.constant(LABELS, dtype=tf.float32)
    return features, labels


def train_and_evaluate(tf, estimator, steps, input_fn, values=None):
    """Train `steps` steps, evaluate once; the observations of an Estimator pattern with one BN layer."""
    hook = loss_capture_hook(tf)
    estimator.train(input_fn, steps=steps, hooks=[hook])
    evaluation = estimator.evaluate(input_fn, steps=1)
    moving_mean, moving_variance = estimator_statistics(estimator)
    return observations({"bn": layer(moving_mean, moving_variance, feature_values() if values is None else values)},
                        update_ops=hook.update_ops, train_loss=hook.loss, eval_loss=float(evaluation["loss"]),
                        steps_ran=hook.runs)


def estimator_model_fn(tf, make_batch_norm, fix_updates=False):
    """The report's custom model_fn: BN -> Dense(1), MSE, Adam, train op under UPDATE_OPS.

    `make_batch_norm()` builds the BN layer; with `fix_updates` the layer's own updates are grouped
    with the train op (the TF 2 migration guide's fix for Keras layers).
    """
    compat = v1(tf)
    estimator_module = estimator_api(tf)
    dense = require(tf, "keras.layers.Dense")

    def model_fn(features, labels, mode):
        training = (mode == estimator_module.ModeKeys.TRAIN)
        batch_norm = make_batch_norm()
        x = batch_norm(features, training=training)
        y = dense(1)(x)
        if mode == estimator_module.ModeKeys.PREDICT:
            return estimator_module.EstimatorSpec(mode=mode, predictions={"prob": y})
        loss = tf.reduce_mean(compat.losses.mean_squared_error(labels, y))
        if mode == estimator_module.ModeKeys.TRAIN:
            optimizer = compat.train.AdamOptimizer(learning_rate=LEARNING_RATE)
            # set batch normalization parameters to train
            update_ops = compat.get_collection(compat.GraphKeys.UPDATE_OPS)
            with tf.control_dependencies(update_ops):
                train_op = optimizer.minimize(loss, global_step=compat.train.get_global_step())
            if fix_updates:
                train_op = tf.group(train_op, *batch_norm.updates)
            return estimator_module.EstimatorSpec(mode=estimator_module.ModeKeys.TRAIN, loss=loss,
                                                  train_op=train_op)
        return estimator_module.EstimatorSpec(mode=mode, loss=loss)

    return estimator_module, model_fn
