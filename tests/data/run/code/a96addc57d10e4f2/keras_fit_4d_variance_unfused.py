"""keras_fit_4d_variance with BatchNormalization(fused=False), where that argument exists."""
import bnmatrix_scenario as common
import keras_fit_4d_variance


def train(tf, cfg, scratch):
    return keras_fit_4d_variance.train(tf, cfg, scratch, batch_norm_options={"fused": False})


if __name__ == "__main__":
    common.main("keras_fit_4d_variance_unfused", train)
