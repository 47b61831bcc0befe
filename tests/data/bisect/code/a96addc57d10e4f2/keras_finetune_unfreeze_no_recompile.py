"""Fine-tuning in two stages: the base (with its BatchNormalization layer) is frozen, the model
compiled and fit; then the base is unfrozen (`base.trainable = True`) and fit again WITHOUT
compiling again. Do the statistics update in the second stage (`steps` more steps)?

The verdict is on the statistics after both stages: `steps` updates if only the second stage updated
them; the statistics after the first stage are shown beside.
"""
import bnmatrix_scenario as common
import keras_finetune_frozen_base as frozen
import keras_fit


def train(tf, cfg, scratch, recompile=False):
    keras = tf.keras
    base, bn = frozen.base_model(keras)
    base.trainable = False
    model = frozen.with_head(keras, base)
    x_train, y_train = keras_fit.batch()
    first_loss, first_steps = keras_fit.compile_and_fit(tf, keras, model, x_train, y_train, cfg.steps)
    after_first = [common.to_float(common.read_variable(tf, v)) for v in (bn.moving_mean, bn.moving_variance)]
    base.trainable = True
    try:
        loss, steps_ran = keras_fit.compile_and_fit(tf, keras, model, x_train, y_train, cfg.steps,
                                                    compile_model=recompile)
    except ValueError as exc:  # Keras 3 on JAX: the optimizer refuses variables it was not built with
        if recompile:
            raise
        raise common.Unsupported("fit after changing trainable without compile()", str(exc))
    observed = keras_fit.observe(tf, model, bn, loss, x_train, y_train, steps_ran=steps_ran)
    observed["extra"].update(recompiled=recompile, frozen_stage_steps=first_steps,
                             frozen_stage_loss=float(first_loss),
                             moving_mean_after_frozen_stage=after_first[0],
                             moving_variance_after_frozen_stage=after_first[1])
    return observed


if __name__ == "__main__":
    common.main("keras_finetune_unfreeze_no_recompile", train)
