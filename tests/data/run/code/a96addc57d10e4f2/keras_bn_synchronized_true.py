"""BatchNormalization(synchronized=True) (Keras 2.12 and later, and Keras 3) under MirroredStrategy
over two logical CPU devices, on a global batch of 8 whose halves differ: the argument that replaced
SyncBatchNormalization must follow the global batch (mean 3.5, variance 5.25). Unsupported where the
argument does not exist (keras_bn_sync_mirrored falls back to the experimental class there).
"""
import bnmatrix_scenario as common
import keras_bn_sync_mirrored as mirrored
import keras_fit


def train(tf, cfg, scratch):
    return mirrored.train(tf, cfg, scratch,
                          make_batch_norm=lambda keras: keras_fit.batch_norm(keras, {"synchronized": True}))


if __name__ == "__main__":
    common.main("keras_bn_synchronized_true", train)
