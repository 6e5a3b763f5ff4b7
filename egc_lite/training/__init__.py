"""Every training loop of the kit (each resumable, each runs under ``accelerate launch``).

* :mod:`.backbone` — egc-tiny's three phases (autoencoder, decoder with a critic, UNet) and its export;
* :mod:`.diffeic` — one DiffEIC rate point (codec B's compressor and control module) and its export.
"""
