"""keras_fit with the batch as a 4-D input (N, 1, 1, 1) and the layer's default settings.

On 4-D input Keras may take the fused kernel, which updates the moving variance with the
unbiased (n - 1) batch variance, while the unfused path uses the biased (n) one: the verdict says
which variance the moving variance follows.
"""
import bnmatrix_scenario as common
import keras_fit


def train(tf, cfg, scratch, batch_norm_options=None):
    model, bn, loss, x_train, y_train, steps_ran = keras_fit.fit(tf, cfg, four_d=True,
                                                                 batch_norm_options=batch_norm_options)
    return keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)


if __name__ == "__main__":
    common.main("keras_fit_4d_variance", train)
