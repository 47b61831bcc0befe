"""keras_finetune_unfreeze_no_recompile, compiling the model again after unfreezing the base (what
the Keras guide asks for): do the statistics update in the second stage?
"""
import bnmatrix_scenario as common
import keras_finetune_unfreeze_no_recompile as unfreeze


def train(tf, cfg, scratch):
    return unfreeze.train(tf, cfg, scratch, recompile=True)


if __name__ == "__main__":
    common.main("keras_finetune_unfreeze_recompile", train)
