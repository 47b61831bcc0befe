"""The report's Session code with UPDATE_OPS filtered to the training tower's name scope.

The fix the tensorflow/models repository used for multi-tower training: collect only the update
ops of the tower being trained, so the reused tower's BN layers do not update the shared moving
statistics a second time per step.
"""
import bnmatrix_scenario as common
import layers_bn_session


def train(tf, cfg, scratch):
    return layers_bn_session.train(tf, cfg, scratch, update_scope="batch_normalization_test/for_train")


if __name__ == "__main__":
    common.main("layers_bn_session_train_tower", train)
