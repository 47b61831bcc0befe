"""keras_fit under the global mixed precision policy mixed_bfloat16 (compute in bfloat16, float32
variables): do the moving statistics still update once per step, and in which dtype?
"""
import bnmatrix_scenario as common
import keras_fit_mixed_float16


def train(tf, cfg, scratch):
    return keras_fit_mixed_float16.train(tf, cfg, scratch, policy="mixed_bfloat16")


if __name__ == "__main__":
    common.main("keras_fit_mixed_bfloat16", train)
