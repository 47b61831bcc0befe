"""A training-mode forward pass with epsilon 0 and a negative moving variance: its square root does not exist."""
import _raw


def edit(result):
    bn = result["layers"]["bn"]
    bn["forward"] = {"inputs": [0.0, 1.0], "outputs": [0.0, 1.0], "epsilon": 0.0, "moving_mean": 0.0,
                     "moving_variance": -1.0}
    return result


if __name__ == "__main__":
    _raw.main("negative_variance", edit)
