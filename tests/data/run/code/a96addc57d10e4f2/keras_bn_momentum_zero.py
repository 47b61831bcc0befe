"""keras_fit with BatchNormalization(momentum=0.0): every update replaces the moving statistics
with the batch's, so after training they must equal the batch's mean and variance.

Keras's momentum is the weight of the old value (moving = moving * momentum + batch * (1 - momentum)),
PyTorch's the weight of the new one: a momentum of 0 means opposite things in the two.
"""
import bnmatrix_scenario as common
import keras_fit


def train(tf, cfg, scratch):
    model, bn, loss, x_train, y_train, steps_ran = keras_fit.fit(tf, cfg, batch_norm_options={"momentum": 0.0})
    observed = keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)
    observed["momentum"] = float(bn.momentum)
    return observed


if __name__ == "__main__":
    common.main("keras_bn_momentum_zero", train)
