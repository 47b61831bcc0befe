"""keras_gradient_tape, with the model called as `model(x)`: no `training` argument in the custom
loop. Keras then runs BatchNormalization in inference mode (the learning phase defaults to 0): the
loop trains without error while the statistics never change.
"""
import bnmatrix_scenario as common
import keras_gradient_tape as tape


def train(tf, cfg, scratch):
    tape.eager(tf)
    model, bn, optimizer, x, y = tape.build(tf)
    return tape.observe(tf, model, bn, tape.make_step(tf, model, optimizer, x, y, training=False), cfg.steps, x, y)


if __name__ == "__main__":
    common.main("keras_gradient_tape_no_training", train)
