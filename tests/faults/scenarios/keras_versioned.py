"""Like versioned.py, but the count of BN updates comes from the fake keras installed beside the fake TF: `bnmatrix
bisect --package keras` holds TF and searches keras's releases."""
import bnmatrix_scenario as bns
import ok


def train(tf, cfg, scratch):
    import keras
    mean, variance = ok.closed_form(keras.BN_UPDATES)
    return bns.observations({"bn": bns.layer(mean, variance, values=bns.feature_values())},
                            extra={"keras": keras.__version__})


if __name__ == "__main__":
    bns.main("keras_versioned", train)
