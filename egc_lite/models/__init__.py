"""The networks: their architecture, construction and weights files, no training loop and no codec logic.

* :mod:`.autoencoder` — the two VAE classes the kit runs (``AutoencoderKL``, ``AutoencoderTiny``) behind one interface;
* :mod:`.tiny` — egc-tiny's and the test models' builders (VAE, UNet, scheduler) and egc-tiny's token encoder;
* :mod:`.diffeic` — codec B's learned parts: the latent compressor and the control module.
"""
