"""A plain (not synchronised) BatchNormalization under MirroredStrategy over two logical CPU devices,
trained with fit on a global batch of 8 whose halves differ ([0..3] on one replica, [4..7] on the
other). Each replica normalises with its own half's statistics: which data do the moving statistics
follow, the global batch (mean 3.5, variance 5.25), the average of the replicas' statistics (mean 3.5,
variance 1.25), or one replica's?
"""
import bnmatrix_scenario as common
import keras_bn_sync_mirrored as mirrored


def train(tf, cfg, scratch):
    return mirrored.train(tf, cfg, scratch, make_batch_norm=lambda keras: keras.layers.BatchNormalization())


if __name__ == "__main__":
    common.main("keras_bn_mirrored_plain", train)
