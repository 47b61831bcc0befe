"""Synchronised BatchNormalization under MirroredStrategy over two logical CPU devices, trained
with fit on a global batch of 8 whose halves differ ([0..3] on one replica, [4..7] on the other).

A synchronised layer must follow the global batch (mean 3.5, variance 5.25); a per-replica one
ends with the average of the replicas' statistics (mean 3.5, variance 1.25).
"""
import bnmatrix_scenario as common
import keras_fit

GLOBAL_BATCH = [[float(v)] for v in range(8)]
# What else the statistics might follow: the average of the two replicas' batch statistics, or one replica's.
REPLICAS = {"replica_mean": common.statistics_data(4, 3.5, 1.25, 5.0 / 3.0),
            "first_replica": {"values": [0.0, 1.0, 2.0, 3.0]}, "second_replica": {"values": [4.0, 5.0, 6.0, 7.0]}}


def logical_cpus(tf):
    """Split the one physical CPU into two logical devices (before TF's runtime starts)."""
    config = common.require(tf, "config")
    cpus = common.require(tf, "config.list_physical_devices")("CPU")
    configure = getattr(config, "set_logical_device_configuration", None) or getattr(
        getattr(config, "experimental", None), "set_virtual_device_configuration", None)
    device = getattr(config, "LogicalDeviceConfiguration", None) or getattr(
        getattr(config, "experimental", None), "VirtualDeviceConfiguration", None)
    if configure is None or device is None:
        raise common.Unsupported("tf.config.set_logical_device_configuration", "absent in TF " + tf.__version__)
    configure(cpus[0], [device(), device()])


def sync_batch_norm(keras):
    """BatchNormalization(synchronized=True) (2.12+), else layers.experimental.SyncBatchNormalization."""
    try:
        return keras.layers.BatchNormalization(synchronized=True)
    except (TypeError, ValueError) as exc:  # Keras 2 raises TypeError for an unknown argument, Keras 3 ValueError
        experimental = getattr(getattr(keras.layers, "experimental", None), "SyncBatchNormalization", None)
        if experimental is None:
            raise common.Unsupported("keras.layers.BatchNormalization(synchronized=True)", str(exc))
        return experimental()


def train(tf, cfg, scratch, make_batch_norm=sync_batch_norm):
    """`make_batch_norm(keras)` builds the layer, in the strategy's scope."""
    import numpy as np
    common.require(tf, "distribute.MirroredStrategy")
    logical_cpus(tf)
    keras = tf.keras
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        bn = make_batch_norm(keras)
        inputs = keras.Input(shape=(1,))
        model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(1)(bn(inputs)))
        model.compile(optimizer=keras.optimizers.Adam(common.LEARNING_RATE), loss="mse")
    x = np.array(GLOBAL_BATCH, dtype=np.float32)
    y = -x
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(GLOBAL_BATCH)).repeat()
    counter = keras_fit.step_counter(keras)
    history = model.fit(dataset, epochs=cfg.steps, steps_per_epoch=1, verbose=0, callbacks=[counter])
    values = [row[0] for row in GLOBAL_BATCH]
    local = [strategy.experimental_local_results(v) for v in (bn.moving_mean, bn.moving_variance)]
    return common.observations(
        {"bn": common.layer(bn.moving_mean.numpy(), bn.moving_variance.numpy(), values, alternatives=REPLICAS)},
        train_loss=float(history.history["loss"][-1]), steps_ran=counter.steps,
        extra={"replicas": strategy.num_replicas_in_sync, "layer": type(bn).__name__,
               "moving_mean_per_replica": [common.to_float(v.numpy()) for v in local[0]],
               "moving_variance_per_replica": [common.to_float(v.numpy()) for v in local[1]]})


if __name__ == "__main__":
    common.main("keras_bn_sync_mirrored", train)
