"""keras_gradient_tape's training step compiled with tf.function: the layer's updates must be
traced into the graph function and run on every call."""
import bnmatrix_scenario as common
import keras_gradient_tape as tape_loop


def train(tf, cfg, scratch):
    tape_loop.eager(tf)
    function = common.require(tf, "function")
    model, bn, optimizer, x, y = tape_loop.build(tf)
    step = function(tape_loop.make_step(tf, model, optimizer, x, y))
    return tape_loop.observe(tf, model, bn, step, cfg.steps, x, y)


if __name__ == "__main__":
    common.main("keras_tf_function", train)
