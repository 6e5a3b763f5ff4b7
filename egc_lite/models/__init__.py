"""The networks: their architecture, construction and weights files, no training loop and no codec logic.

* :mod:`.autoencoder` — the three autoencoder classes the kit runs (``AutoencoderKL``, ``AutoencoderTiny``, ``TAEF2``)
  behind one interface;
* :mod:`.taef2` — the pretrained taef2 autoencoder's architecture (TAESD's layout with pooled mid-blocks);
* :mod:`.tiling` — exact window-by-window passes of convolution-only networks (large photos in bounded memory);
* :mod:`.memory` — the computed peak memory of encoding and decoding (what the memory budget checks);
* :mod:`.tiny` — egc-tiny's and the test models' builders (VAE, UNet, scheduler) and egc-tiny's token encoder;
* :mod:`.diffeic` — codec B's learned parts: the latent compressor and the control module.
"""
