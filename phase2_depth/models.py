"""Phase 2's model: a 5-layer CNN, every layer written out.

Five convolutions, each followed by BatchNorm and ReLU; max-pooling halves
the image three times; a global pool, Dropout and one linear layer classify::

    32x32  conv(3 -> w1)  BN ReLU  [pool]
           conv(w1 -> w2) BN ReLU  pool     -> 16x16
           conv(w2 -> w3) BN ReLU
           conv(w3 -> w4) BN ReLU  pool     ->  8x8
           conv(w4 -> w5) BN ReLU  pool     ->  4x4
           global max pool -> Dropout -> Linear(w5 -> 10)

Why each piece:
* **3x3 convolutions**: small filters stacked see a growing neighbourhood
  (two 3x3 layers see 5x5) with fewer weights than one big filter.
* **BatchNorm2d** keeps each channel's activations near zero mean and unit
  variance during training, which lets a higher learning rate work.
* **MaxPool2d** trades resolution for channels and makes small shifts matter less.
* **Dropout** before the classifier randomly silences features while
  training, so the classifier cannot lean on any single one.

``widths`` sets the channels; ``pool_first`` pools after the first
convolution too (the "narrow, pool early" CPU variant: four times less work
in every later layer).
"""

from __future__ import annotations

import torch
import torch.nn as nn

WIDTHS = {
    "narrow": (16, 32, 64, 128, 128),   # CPU-friendly: minutes, not hours
    "medium": (32, 64, 128, 256, 256),  # the CPU recipe
    "wide": (64, 128, 256, 512, 512),   # the GPU recipe
}


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """One block of the CNN: a 3x3 convolution, BatchNorm, ReLU, as an ``nn.Sequential``.

    ``(N, c_in, H, W) -> (N, c_out, H, W)``: padding 1 keeps the image size,
    so only the pooling layers shrink it.  BatchNorm2d normalises each of the
    ``c_out`` channels over the batch and the pixels, then applies its own
    learned scale and shift; the convolution's bias would be cancelled by
    that normalisation, so the convolution goes without one.  ReLU comes
    last: the block's outputs are never negative.
    """
    # EXERCISE p2-cnn.1: the convolution block
    # hint: three layers in order: Conv2d (3x3, padding 1, no bias), BatchNorm2d over c_out channels, ReLU
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    # END EXERCISE


class FiveLayerCNN(nn.Module):
    def __init__(self, widths=WIDTHS["medium"], num_classes: int = 10, dropout: float = 0.2,
                 pool_first: bool = False, in_channels: int = 3):
        super().__init__()
        w1, w2, w3, w4, w5 = widths
        self.widths, self.pool_first = tuple(widths), pool_first
        self.conv1 = conv_bn_relu(in_channels, w1)
        self.conv2 = conv_bn_relu(w1, w2)
        self.conv3 = conv_bn_relu(w2, w3)
        self.conv4 = conv_bn_relu(w3, w4)
        self.conv5 = conv_bn_relu(w4, w5)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(w5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` (normalised) -> class logits ``(N, num_classes)``.

        The path is the diagram at the top of this module: ``conv1`` (then
        ``self.pool`` when ``self.pool_first``), ``conv2`` and a pool,
        ``conv3``, ``conv4`` and a pool, ``conv5`` and a pool, then the
        maximum over all remaining positions of each channel, ``self.dropout``
        and ``self.classifier``.  The result is raw logits, not
        probabilities: ``nn.CrossEntropyLoss`` applies log-softmax itself.
        """
        # EXERCISE p2-cnn.2: the forward pass
        # hint: follow the diagram; the global max pool is torch.amax over the H and W axes;
        # hint: use self.dropout (the module), which nn.Module switches off in eval mode, and stop at the logits
        x = self.conv1(x)
        if self.pool_first:
            x = self.pool(x)
        x = self.pool(self.conv2(x))
        x = self.conv3(x)
        x = self.pool(self.conv4(x))
        x = self.pool(self.conv5(x))
        x = torch.amax(x, dim=(2, 3))          # global max pool: (N, w5, h, w) -> (N, w5)
        return self.classifier(self.dropout(x))
        # END EXERCISE


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model: nn.Module, input_shape=(1, 3, 32, 32)) -> int:
    """Multiply-adds of one forward pass of one image, counted from the conv and linear layers.

    A convolution does (k*k*c_in) multiply-adds for each of its output values
    (c_out * h_out * w_out of them); a linear layer does in*out.  BatchNorm,
    ReLU and pooling are a few operations per value: small by comparison.
    """
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += k * output[0].numel()
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_shape, device=next(model.parameters()).device))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total
