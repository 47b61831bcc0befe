"""bnmatrix's warm-up of a GPU cell, run once before its scenarios and outside their timeout.

A small matmul and one BatchNormalization training step on the cell's device, so that CUDA initialises, cuBLAS
and cuDNN load, and any PTX the release has no machine code for is compiled into the JIT cache now, not inside the
first scenario's time. It prints one BNMATRIX_RESULT line: what TensorFlow reports of its CUDA build and of the
device, and how long each part took. Python 3.5 syntax (the oldest GPU images'), standard library, NumPy and TF.
"""
import json
import sys
import time


def _build(tf):
    """The CUDA and cuDNN versions TF says it was built with (get_build_info from 2.3 on, build_info before)."""
    try:
        info = dict(tf.sysconfig.get_build_info())
    except AttributeError:
        try:
            from tensorflow.python.platform import build_info
            info = {key: getattr(build_info, key) for key in ("cuda_version_number", "cudnn_version_number")
                    if hasattr(build_info, key)}
        except ImportError:
            info = {}
    return {"cuda": str(info.get("cuda_version", info.get("cuda_version_number", ""))),
            "cudnn": str(info.get("cudnn_version", info.get("cudnn_version_number", "")))}


def _work(tf, device):
    """A 256x256 matmul and a BatchNormalization training step on `device`; the devices TF describes."""
    import numpy as np
    x = np.random.RandomState(0).rand(16, 8, 8, 4).astype("float32")
    if hasattr(tf, "function") and tf.executing_eagerly():
        with tf.device(device):
            product = tf.matmul(tf.ones((256, 256)), tf.ones((256, 256)))
            layer = tf.keras.layers.BatchNormalization()
            out = layer(tf.constant(x), training=True)
            total = float(tf.reduce_sum(product).numpy()) + float(tf.reduce_sum(out).numpy())
    else:
        v1 = getattr(tf, "compat", None) and getattr(tf.compat, "v1", None) or tf
        with tf.Graph().as_default():
            with tf.device(device):
                product = tf.matmul(tf.ones((256, 256)), tf.ones((256, 256)))
                out = v1.layers.batch_normalization(tf.constant(x), training=True)
            with v1.Session() as session:
                session.run(v1.global_variables_initializer())
                total = float(session.run(tf.reduce_sum(product))) + float(session.run(tf.reduce_sum(out)))
    from tensorflow.python.client import device_lib
    described = [d.physical_device_desc for d in device_lib.list_local_devices() if d.device_type == "GPU"]
    return total, described


def main(argv):
    device = "/GPU:0" if "--device" not in argv or argv[argv.index("--device") + 1] == "gpu" else "/CPU:0"
    started = time.time()
    import tensorflow as tf
    imported = time.time()
    answer = {"tf_version": tf.__version__, "import_s": round(imported - started, 3)}
    answer.update(_build(tf))
    try:  # TF 2.1+ creates its GPU devices here: where it has no machine code for the GPU, it warns of a PTX JIT
        answer["gpus_listed"] = len(tf.config.list_physical_devices("GPU"))
    except AttributeError:
        pass
    try:
        total, described = _work(tf, device)
        answer.update(outcome="ok", device=device, checksum=total, gpus_described=described)
    except Exception as exc:  # noqa: BLE001  recorded: the scenarios run anyway and say what fails
        answer.update(outcome="error", error="%s: %s" % (type(exc).__name__, str(exc)[:500]))
    answer["work_s"] = round(time.time() - imported, 3)
    sys.stdout.write("BNMATRIX_RESULT " + json.dumps(answer) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
