"""keras_fit with BatchNormalization(virtual_batch_size=2) (ghost batch normalization) on a batch of
4, [0, 1, 2, 5]: the batch is split into two virtual batches, each normalised with its own
statistics. Which data do the moving statistics follow: the whole batch (mean 2, variance 3.5), the
mean of the virtual batches' statistics with the batch split in halves ([0, 1] and [2, 5]: variance
1.25), or split in turn ([0, 2] and [1, 5]: variance 2.5)? Never updating the variance leaves 1.

Its own batch, not the constant one: there the variance of one split equals the initial 1.
Keras 3 removed virtual_batch_size (unsupported there).
"""
import bnmatrix_scenario as common
import keras_fit

VIRTUAL_BATCH = 2
VALUES = [0.0, 1.0, 2.0, 5.0]


def train(tf, cfg, scratch):
    model, bn, loss, x_train, y_train, steps_ran = keras_fit.fit(
        tf, cfg, batch_norm_options={"virtual_batch_size": VIRTUAL_BATCH}, features=[[v] for v in VALUES])
    observed = keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran, values=VALUES)
    # The mean of two virtual batches' means and (biased; n - 1 doubles them) variances.
    observed["layers"]["bn"]["alternatives"] = {
        "halves": common.statistics_data(VIRTUAL_BATCH, 2.0, (0.25 + 2.25) / 2, 0.25 + 2.25),
        "alternate_samples": common.statistics_data(VIRTUAL_BATCH, 2.0, (1.0 + 4.0) / 2, 1.0 + 4.0)}
    return observed


if __name__ == "__main__":
    common.main("keras_bn_virtual_batch_size", train)
