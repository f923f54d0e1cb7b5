"""Model architectures. Each public function here is an `architecture` an instance can name.

How to write a model (EXAMPLE_model below is the template):
- Signature: `def MY_model(input_shape, output_size, task_type, <training parameters>, <own keywords>=default)`.
  * input_shape (frames, bins), output_size (number of classes, or 1 for regression) and task_type
    ("classification" | "regression") come from the data and the instance; never hard-code them (no fixed 8).
  * An argument without a default must be a training parameter of config.ini [training] (for instance
    regularization_lambda): xval passes the instance's resolved value, so an override really reaches the layers.
  * Every keyword default becomes a parameter of its own that instances can override by name
    ('filters = (32, 64)'). Defaults must be literals (numbers, strings, booleans, None, tuples, lists), since
    xval reads them without importing TensorFlow, to validate every instance before any training starts.
- Return an uncompiled keras.Model whose input is (frames, bins) and whose output is softmax over output_size
  classes for classification, one linear unit for regression. xval adds the input normalisation (statistics of
  the training items) in front of it, compiles, trains and saves it.
"""
import keras
from keras import layers, regularizers


def output_layer(output_size, task_type):
    """The last layer: softmax over output_size classes, or one linear unit for regression."""
    if task_type == "regression":
        return layers.Dense(1, activation="linear", name="prediction")
    return layers.Dense(output_size, activation="softmax", name="prediction")


def EXAMPLE_model(input_shape, output_size, task_type, regularization_lambda,
                  filters=(16, 32), kernel_size=3, pool_size=2, dropout=0.3, dense_units=64):
    """A small CNN over a (frames, bins) feature map: conv/pool blocks, an average over time, a dense layer.

    The average runs over time only: where in frequency a pattern sits (pitch, formants, spectral tilt) is what
    tells emotions apart, so the bins stay separate (pooling over frequency too costs the demo half its accuracy).

    Args:
        input_shape: (frames, bins) of one clip.
        output_size: classes (classification) or 1 (regression).
        task_type: "classification" or "regression".
        regularization_lambda: L2 weight on every kernel (from config.ini [training], overridable).
        filters: channels of each conv block, one block per entry.
        kernel_size, pool_size: square conv kernel and max-pool size, in (frames, bins) cells.
        dropout: dropout rate before and after the dense layer.
        dense_units: width of the dense layer.
    Returns: an uncompiled keras.Model, (batch, frames, bins) -> (batch, output_size).
    """
    l2 = regularizers.L2(regularization_lambda)
    inputs = keras.Input(shape=tuple(input_shape))
    x = layers.Reshape((*input_shape, 1))(inputs)
    for channels in filters:
        x = layers.Conv2D(channels, kernel_size, padding="same", activation="relu", kernel_regularizer=l2)(x)
        x = layers.MaxPooling2D(pool_size, padding="same")(x)
    _, frames, bins, channels = x.shape
    x = layers.Reshape((frames, bins * channels))(x)  # (batch, frames', bins' x channels)
    x = layers.GlobalAveragePooling1D()(x)  # mean over time
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=l2)(x)
    x = layers.Dropout(dropout)(x)
    outputs = output_layer(output_size, task_type)(x)
    return keras.Model(inputs, outputs, name="EXAMPLE_model")


def POOLED_STATS_model(input_shape, output_size, task_type, regularization_lambda,
                       hidden_units=(128, 64), dropout=0.3, standardize=False):
    """An MLP over the mean, variance and maximum of every bin over time: suits MFCC input.

    Built from stock layers only, so the saved .hdf5 reloads without custom objects or unsafe deserialisation.

    Args:
        input_shape: (frames, bins) of one clip.
        output_size, task_type: as in EXAMPLE_model.
        regularization_lambda: L2 weight on every kernel.
        hidden_units: width of each hidden layer.
        dropout: dropout rate after each hidden layer.
        standardize: batch-normalise the statistics (3 * bins) before the first layer, as the baseline
            standardises its own.
    Returns: an uncompiled keras.Model, (batch, frames, bins) -> (batch, output_size).
    """
    l2 = regularizers.L2(regularization_lambda)
    inputs = keras.Input(shape=tuple(input_shape))
    mean = layers.GlobalAveragePooling1D()(inputs)
    squared_mean = layers.GlobalAveragePooling1D()(layers.Multiply()([inputs, inputs]))
    variance = layers.Subtract()([squared_mean, layers.Multiply()([mean, mean])])
    maximum = layers.GlobalMaxPooling1D()(inputs)
    x = layers.Concatenate()([mean, variance, maximum])
    if standardize:
        x = layers.BatchNormalization()(x)
    for units in hidden_units:
        x = layers.Dense(units, activation="relu", kernel_regularizer=l2)(x)
        x = layers.Dropout(dropout)(x)
    outputs = output_layer(output_size, task_type)(x)
    return keras.Model(inputs, outputs, name="POOLED_STATS_model")


# The architectures that run on one Keras backend only (read from the source, like the signatures, so a routine
# refuses an instance of another backend before anything is trained).
ARCHITECTURE_BACKENDS = {"TORCH_CNN_model": "torch"}


def TORCH_CNN_model(input_shape, output_size, task_type, channels=(8, 16), kernel_size=3, hidden_units=32,
                    dropout=0.2):
    """A small CNN written as a plain torch.nn.Module, wrapped for Keras: how to bring a PyTorch model to xval.

    Needs backend = "torch" (ARCHITECTURE_BACKENDS says so; torch is imported here, never on other backends).
    The module's layers have fixed sizes (no lazy layers), so Keras sees its weights the moment it is built; xval
    saves such a model's weights (.weights.h5) and rebuilds it from this function to reload it.

    Args:
        input_shape: (frames, bins) of one clip.
        output_size, task_type: as in EXAMPLE_model.
        channels: output channels of each conv block (3x3 conv, ReLU, 2x2 max-pool), one block per entry.
        kernel_size: square conv kernel, in (frames, bins) cells (odd: the padding keeps the size).
        hidden_units: width of the dense layer after the mean over time.
        dropout: dropout rate before the last layer.
    Returns: an uncompiled keras.Model, (batch, frames, bins) -> (batch, output_size).
    """
    import torch

    class SpectrogramCNN(torch.nn.Module):
        """(batch, frames, bins) -> (batch, output_size) scores: conv blocks, mean over time, two linear layers."""

        def __init__(self):
            super().__init__()
            blocks, previous = [], 1
            for width in channels:
                blocks += [torch.nn.Conv2d(previous, width, kernel_size, padding=kernel_size // 2),
                           torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
                previous = width
            self.blocks = torch.nn.Sequential(*blocks)
            bins = input_shape[1] // 2 ** len(channels)
            self.head = torch.nn.Sequential(torch.nn.Linear(previous * bins, hidden_units), torch.nn.ReLU(),
                                            torch.nn.Dropout(dropout), torch.nn.Linear(hidden_units, output_size))

        def forward(self, x):
            x = self.blocks(x.unsqueeze(1))  # (batch, channels, frames', bins')
            x = x.mean(dim=2).flatten(1)  # mean over time: (batch, channels x bins')
            return self.head(x)

    if keras.backend.backend() != "torch":
        raise ValueError(f"TORCH_CNN_model needs backend = \"torch\", this process runs {keras.backend.backend()!r}")
    inputs = keras.Input(shape=tuple(input_shape))
    scores = layers.TorchModuleWrapper(SpectrogramCNN(), output_shape=(None, output_size), name="torch_cnn")(inputs)
    outputs = layers.Activation("softmax" if task_type == "classification" else "linear", name="prediction")(scores)
    return keras.Model(inputs, outputs, name="TORCH_CNN_model")
