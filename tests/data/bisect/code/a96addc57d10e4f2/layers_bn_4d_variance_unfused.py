"""layers_bn_4d_variance with BatchNormalization(fused=False)."""
import bnmatrix_scenario as common
import layers_bn_4d_variance


def train(tf, cfg, scratch):
    return layers_bn_4d_variance.train(tf, cfg, scratch, batch_norm_options={"fused": False})


if __name__ == "__main__":
    common.main("layers_bn_4d_variance_unfused", train)
