"""cnndsl: a compiler for a declarative language of convolutional neural networks.

>>> import cnndsl
>>> net = cnndsl.compile("specs/fashion_mnist.cnn")     # doctest: +SKIP
>>> print(net.summary())                                  # doctest: +SKIP
>>> model = net.build(seed=0)                             # doctest: +SKIP
"""

from cnndsl.network import Network, compile, compile_block, load
from cnndsl.source import CnnError, Diagnostic, Span

__version__ = "0.1.0"

__all__ = ["CnnError", "Diagnostic", "Network", "Span", "compile", "compile_block", "load"]
