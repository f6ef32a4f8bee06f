"""iconforge: teach a text-to-image model to draw icons in the bioicons style."""
import logging

# torchao (train.quantize: int8) is imported by diffusers whenever it is installed, and on torch 2.14 it
# logs import-time warnings about its enums and about torchao tensor types diffusers looks for; neither
# concerns this code (it loads no torchao-serialized checkpoint), and they would precede every stage's
# one-line error.
for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)
