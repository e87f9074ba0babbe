"""The torchvision-layout state dict of a standard zoo model (NumPy arrays),
as a PyTorch checkpoint of the same network would hold it."""

import keras

KERAS_TO_TORCH_CONV = (3, 2, 0, 1)


def state_dict_of(model):
    state = {}
    for layer in model.layers:
        key = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            state[key + ".weight"] = layer.kernel.numpy().transpose(KERAS_TO_TORCH_CONV)
        elif isinstance(layer, keras.layers.BatchNormalization):
            for name, variable in (("weight", layer.gamma), ("bias", layer.beta),
                                   ("running_mean", layer.moving_mean),
                                   ("running_var", layer.moving_variance)):
                state[f"{key}.{name}"] = variable.numpy()
        elif isinstance(layer, keras.layers.Dense):
            state[key + ".weight"] = layer.kernel.numpy().T
            state[key + ".bias"] = layer.bias.numpy()
    return state
